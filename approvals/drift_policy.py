"""The drift policy: Cedar's say over one recorded tool call (allow, flag, or end the grant).

Drift policies live in their own file and schema (`policies/drift.cedar`,
`policies/drift.cedarschema`): the request policies' context (intent, duration, eligibility, …)
describes a request, not a call, and sharing one schema would make every request policy that
leaves its action open fail validation for `Action::"tool_call"`. The set is parsed once per
process; each call costs one `is_authorized`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import cedarpy
from django.conf import settings

POLICIES = Path(__file__).resolve().parent / "policies"
TOOL_CALL = 'Action::"tool_call"'
STRENGTH = {"allow": 0, "flag": 1, "end": 2}


@dataclass(frozen=True)
class DriftDecision:
    outcome: str  # allow | flag | end
    policy_ids: list[str]


@dataclass(frozen=True)
class _Compiled:
    policy_set: cedarpy.PolicySet
    annotations: dict[str, dict[str, str]]


def drift_policy_path() -> Path:
    return Path(getattr(settings, "CUSTODY_DRIFT_POLICY_FILE", "") or POLICIES / "drift.cedar")


@functools.lru_cache(maxsize=4)
def _compiled(path: Path, modified_ns: int) -> _Compiled:
    # Keyed by the file's modification time: an edited policy file is read again, once.
    text = path.read_text()
    problems = drift_policy_problems(text)
    if problems:
        raise ValueError("; ".join(problems))
    document = json.loads(cedarpy.policies_to_json_str(text))
    annotations = {
        pid: policy.get("annotations", {}) or {}
        for pid, policy in document.get("staticPolicies", {}).items()
    }
    policy_set = cedarpy.PolicySet.from_json_str(
        json.dumps(
            {
                "staticPolicies": document.get("staticPolicies", {}),
                "templates": {},
                "templateLinks": [],
            }
        )
    )
    return _Compiled(policy_set, annotations)


def drift_policy_problems(text: str) -> list[str]:
    """What is wrong with a drift policy text against its schema (empty when valid)."""
    result = cedarpy.validate_policies(text, (POLICIES / "drift.cedarschema").read_text())
    return [str(error) for error in result.errors]


@functools.lru_cache(maxsize=1024)
def _parsed_entities(entities_json: str) -> cedarpy.Entities:
    # The same agent calling under the same privilege builds the same entities: parse them once.
    return cedarpy.Entities.from_json_str(entities_json)


def decide_drift(*, agent: dict, privilege: dict, context: dict) -> DriftDecision:
    try:
        path = drift_policy_path()
        compiled = _compiled(path, path.stat().st_mtime_ns)
    except (OSError, ValueError):
        # Fail towards evidence: without a usable drift policy, drift is still flagged.
        return DriftDecision("flag", ["drift-policy-unusable"])
    entities = _parsed_entities(
        json.dumps(
            [
                {
                    "uid": {"type": "Agent", "id": agent["id"]},
                    "attrs": agent["attrs"],
                    "parents": [],
                },
                {
                    "uid": {"type": "Privilege", "id": privilege["id"]},
                    "attrs": privilege["attrs"],
                    "parents": [],
                },
            ]
        )
    )
    result = cedarpy.is_authorized(
        {
            "principal": {"type": "Agent", "id": agent["id"]},
            "action": TOOL_CALL,
            "resource": {"type": "Privilege", "id": privilege["id"]},
            "context": context,
        },
        compiled.policy_set,
        entities,
    )
    if result.diagnostics.errors:
        # Fail towards evidence: a broken drift policy still flags a call Custody found drifting.
        return DriftDecision("flag", ["drift-policy-error"])
    outcome, ids = "allow", []
    if result.allowed:
        for pid in result.diagnostics.reasons:
            wanted = compiled.annotations.get(pid, {}).get("drift", "flag")
            ids.append(compiled.annotations.get(pid, {}).get("id", pid))
            if STRENGTH.get(wanted, 1) > STRENGTH[outcome]:
                outcome = wanted if wanted in STRENGTH else "flag"
    return DriftDecision(outcome, ids)
