"""The drift policy: Cedar's say over one recorded tool call (allow, flag, or end the grant).

Drift policies are `Policy` rows of kind `drift`, edited in admin like request policies
(validated against `policies/drift.cedarschema` on save, versioned, audited, two-person rule);
the shipped default (`policies/drift.cedar`) is loaded by migration 0013. They form their own
set: the request policies' context (intent, duration, eligibility, …) describes a request, not
a call. The set is compiled once per policy generation, the same counter request policies use,
so a change saved in admin is seen at the very next tool call in every process; each call costs
one generation read and one `is_authorized`.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass

import cedarpy

from approvals.policy import CompiledPolicies, compile_policies, policy_text_problems

TOOL_CALL = 'Action::"tool_call"'
STRENGTH = {"allow": 0, "flag": 1, "end": 2}


@dataclass(frozen=True)
class DriftDecision:
    outcome: str  # allow | flag | end
    policy_ids: list[str]


@dataclass(frozen=True)
class _Cached:
    generation: int
    compiled: CompiledPolicies | None  # None: a stored drift policy is unusable


_lock = threading.Lock()
_cached: _Cached | None = None


def drift_policy_problems(text: str) -> list[str]:
    """What is wrong with a drift policy text against its schema (empty when valid)."""
    return [str(problem) for problem in policy_text_problems(text, "drift")]


def _compile(generation: int) -> CompiledPolicies | None:
    from approvals.models import Policy

    rows = list(
        Policy.objects.filter(enabled=True, kind=Policy.Kind.DRIFT)
        .order_by("name")
        .values_list("name", "text")
    )
    # Saving validates; a row written around the service (SQL, a restore) is checked here once.
    if any(drift_policy_problems(text) for _, text in rows):
        return None
    try:
        return compile_policies(rows, generation)
    except Exception:  # cedarpy raises plain exceptions on text it cannot parse
        return None


def current_drift_policies(generation: int | None = None) -> CompiledPolicies | None:
    """The compiled enabled drift policies (None when one is unusable), rebuilt only when the
    policy generation moved. `generation` may be passed by a caller that has read it already."""
    global _cached
    if generation is None:
        from approvals.models import PolicySetState

        generation = (
            PolicySetState.objects.filter(id=1).values_list("generation", flat=True).first() or 0
        )
    cached = _cached
    if cached is not None and cached.generation == generation:
        return cached.compiled
    with _lock:
        if _cached is None or _cached.generation != generation:
            _cached = _Cached(generation, _compile(generation))
        return _cached.compiled


@functools.lru_cache(maxsize=1024)
def _parsed_entities(entities_json: str) -> cedarpy.Entities:
    # The same agent calling under the same privilege builds the same entities: parse them once.
    return cedarpy.Entities.from_json_str(entities_json)


def decide_drift(
    *, agent: dict, privilege: dict, context: dict, generation: int | None = None
) -> DriftDecision:
    compiled = current_drift_policies(generation)
    if compiled is None:
        # Fail towards evidence: without a usable drift policy, drift is still flagged.
        if context.get("drifted"):
            return DriftDecision("flag", ["drift-policy-unusable"])
        return DriftDecision("allow", [])
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
            ids.append(compiled.label(pid))
            if STRENGTH.get(wanted, 1) > STRENGTH[outcome]:
                outcome = wanted if wanted in STRENGTH else "flag"
    return DriftDecision(outcome, sorted(ids))  # Cedar's reasons are a set: evidence reads the same
