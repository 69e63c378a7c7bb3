"""Reproducible installs: the lock files (requirements/, from `make lock`) pin every declared
dependency with hashes, the Docker image's lock is the app alone at the development versions, and
both installs (make's virtualenv, the Dockerfile) take them with --require-hashes."""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ("app.txt", "dev.txt", "uv.txt")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)")


def pins(lock: str) -> dict[str, dict]:
    """name -> {"version", "hashes"} for one lock file; raises on a line that is not a pin."""
    text = (ROOT / "requirements" / lock).read_text()
    pinned: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("--hash=sha256:"):
            assert current is not None, line
            current["hashes"].append(stripped.removeprefix("--hash=sha256:").rstrip(" \\"))
            continue
        match = PIN.match(stripped)
        assert match, f"{lock}: not an exact pin: {line}"
        current = {"version": match["version"], "hashes": []}
        pinned[canonicalize_name(match["name"])] = current
    return pinned


def pyproject(path: str) -> dict:
    return tomllib.loads((ROOT / path).read_text())


def app_requirements() -> list[Requirement]:
    return [Requirement(text) for text in pyproject("pyproject.toml")["project"]["dependencies"]]


def declared() -> list[Requirement]:
    """Everything make's virtualenv installs: the app, its extras, the client, its extras, and
    what builds them."""
    texts = []
    for path in ("pyproject.toml", "client/pyproject.toml"):
        document = pyproject(path)
        texts += document["project"]["dependencies"]
        for extra in document["project"].get("optional-dependencies", {}).values():
            texts += extra
        texts += document["build-system"]["requires"]
    return [Requirement(text) for text in texts]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_in_a_lock_carries_its_hashes(lock):
    pinned = pins(lock)
    assert pinned
    for name, pin in pinned.items():
        assert pin["hashes"], f"{lock}: {name} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in pin["hashes"]), name


def test_the_dev_lock_pins_every_declared_dependency_within_its_bounds():
    pinned = pins("dev.txt")
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in requirements/dev.txt: run make lock"
        assert requirement.specifier.contains(pinned[name]["version"], prereleases=True), (
            f"requirements/dev.txt pins {name}=={pinned[name]['version']}, outside {requirement}:"
            " run make lock"
        )


def test_the_app_lock_is_the_app_alone_at_the_dev_versions():
    app, dev = pins("app.txt"), pins("dev.txt")
    for requirement in app_requirements():
        assert canonicalize_name(requirement.name) in app, f"{requirement}: run make lock"
    for name, pin in app.items():
        assert dev.get(name, {}).get("version") == pin["version"], name
    assert not {"pytest", "playwright", "ruff", "schemathesis", "uv"} & app.keys()


def test_every_declared_dependency_has_an_upper_bound():
    for requirement in declared():
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier), (
            f"{requirement} has no upper bound"
        )


def test_make_installs_its_virtualenv_from_the_dev_lock_with_hashes():
    recipe = subprocess.run(
        ["make", "--dry-run", "--always-make", ".venv/.installed-stamp"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in recipe.splitlines() if "pip install" in line]
    assert len(installs) == 2, recipe
    assert "--require-hashes" in installs[0] and "-r requirements/dev.txt" in installs[0]
    assert "--no-deps" in installs[1] and "-e ." in installs[1], installs[1]


def test_the_image_installs_the_app_lock_with_hashes_then_custody_without_dependencies():
    runs = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if "pip install" in line and not line.lstrip().startswith("#")
    ]
    assert len(runs) == 2, runs
    assert "--require-hashes" in runs[0] and "-r requirements/app.txt" in runs[0], runs[0]
    assert "--no-deps" in runs[1], runs[1]
