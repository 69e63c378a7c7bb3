"""One list of audit verbs (audit/verbs.py): every verb the code writes is in it, so the audit
page's filter offers each one and refuses only what no code writes."""

import ast
import re
from pathlib import Path

from audit.verbs import KNOWN_VERBS

ROOT = Path(__file__).resolve().parents[2]
APPS = ("core", "audit", "agents", "approvals", "frontend", "config")
VERB = re.compile(r"^[a-z_]+\.[a-z_]+$")


def verbs_written_by_the_code() -> dict[str, str]:
    """Each verb-like string given as `verb=` or assigned to a name `verb`, with where."""
    found: dict[str, str] = {}

    def collect(node, where):
        for leaf in ast.walk(node):
            if isinstance(leaf, ast.Constant) and VERB.match(str(leaf.value)):
                found.setdefault(leaf.value, where)

    def names_a_verb(node) -> bool:
        if isinstance(node, ast.keyword):
            return node.arg == "verb"
        return isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "verb" for target in node.targets
        )

    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            where = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text(), where)):
                if names_a_verb(node):
                    collect(node.value, where)
    return found


def test_every_verb_the_code_writes_is_in_the_one_list():
    written = verbs_written_by_the_code()

    missing = {verb: where for verb, where in written.items() if verb not in KNOWN_VERBS}
    assert not missing, f"Add these verbs to audit/verbs.py: {missing}"
    assert len(written) > 40  # the scan found the code's verbs at all


def test_the_list_names_no_verb_twice():
    assert len(set(KNOWN_VERBS)) == len(KNOWN_VERBS)
