"""`make test` on a fresh machine installs what the browser tests need: Debian's chromium, with
apt-get as root or through passwordless sudo, or a sentence saying what to run. Driven through
make with stand-ins for apt-get, id and sudo first on PATH (nothing is installed for real)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_APT_GET = """#!/bin/sh
echo "apt-get $*" >> "$FAKE_LOG"
case "$*" in *install*chromium*) touch "$FAKE_CHROMIUM" && chmod +x "$FAKE_CHROMIUM";; esac
"""
FAKE_ID = """#!/bin/sh
[ "$1" = "-u" ] && echo "$FAKE_UID" && exit 0
exec /usr/bin/id "$@"
"""
FAKE_SUDO = """#!/bin/sh
[ "$1" = "-n" ] && shift
[ "$1" = "true" ] && exit "$FAKE_SUDO_RC"
echo "sudo $*" >> "$FAKE_LOG"
exec "$@"
"""


@pytest.fixture
def machine(tmp_path):
    """A machine without chromium: where make's recipes find apt-get, id and sudo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("apt-get", FAKE_APT_GET), ("id", FAKE_ID), ("sudo", FAKE_SUDO)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    chromium = tmp_path / "usr-bin" / "chromium"
    chromium.parent.mkdir()
    log = tmp_path / "calls.log"
    log.touch()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    }
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        FAKE_LOG=str(log),
        FAKE_CHROMIUM=str(chromium),
        FAKE_UID="0",
        FAKE_SUDO_RC="1",
    )

    def make(*args, **overrides):
        return subprocess.run(
            ["make", "--no-print-directory", *args, f"CHROMIUM={chromium}"],
            cwd=ROOT,
            env={**env, **overrides},
            capture_output=True,
            text=True,
            timeout=60,
        )

    return make, chromium, log


def test_make_test_installs_chromium_first(machine):
    make, _, _ = machine
    planned = make("-n", "test").stdout
    assert "apt-get install -y -qq chromium" in planned
    assert planned.index("apt-get install") < planned.index("bin/pytest")


def test_as_root_it_installs_debians_chromium_with_apt_get(machine):
    make, chromium, log = machine
    done = make("chromium")
    assert done.returncode == 0, done.stderr
    assert "installing Debian's chromium" in done.stdout
    assert log.read_text().splitlines() == [
        "apt-get update -qq",
        "apt-get install -y -qq chromium",
    ]
    assert chromium.exists()
    again = make("chromium")  # present now: nothing to do
    assert again.returncode == 0
    assert len(log.read_text().splitlines()) == 2


def test_a_person_with_passwordless_sudo_gets_it_through_sudo(machine):
    make, chromium, log = machine
    done = make("chromium", FAKE_UID="1000", FAKE_SUDO_RC="0")
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "sudo apt-get update -qq"
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium" in calls
    assert chromium.exists()


def test_without_root_or_sudo_it_says_what_to_run_and_fails(machine):
    make, chromium, log = machine
    refused = make("chromium", FAKE_UID="1000", FAKE_SUDO_RC="1")
    assert refused.returncode != 0
    assert "run 'sudo apt-get install chromium'" in refused.stderr
    assert log.read_text() == ""
    assert not chromium.exists()
