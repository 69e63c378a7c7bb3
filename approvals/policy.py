"""Runtime policy with Cedar: compile the enabled policies once, decide each request with context.

`decide(compiled, facts)` answers DESIGN.md's questions in order (forbidden? automatic?
people? otherwise denied) from one batched Cedar call, and fails closed: a policy that errors
while evaluating turns the answer into a denial rather than silently skipping a `forbid`.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cedarpy

from core.formatting import duration_words

POLICY_DIR = Path(__file__).resolve().parent / "policies"
SCHEMA_TEXT = (POLICY_DIR / "schema.cedarschema").read_text()
DEFAULT_POLICY_TEXT = (POLICY_DIR / "default.cedar").read_text()
SCHEMA = cedarpy.Schema.from_str(SCHEMA_TEXT)
# Drift policies decide one recorded tool call (Action::"tool_call"); their context describes a
# call, not a request, so they have their own schema and form their own set
# (approvals/drift_policy.py).
DRIFT_SCHEMA_TEXT = (POLICY_DIR / "drift.cedarschema").read_text()
DRIFT_DEFAULT_TEXT = (POLICY_DIR / "drift.cedar").read_text()
SCHEMAS = {"request": SCHEMA, "drift": cedarpy.Schema.from_str(DRIFT_SCHEMA_TEXT)}

AUTO_APPROVE = 'Action::"auto_approve"'
REQUEST = 'Action::"request"'


class PolicyTextError(ValueError):
    """Policy text that does not parse or does not fit the schema: `problems` say where (line,
    column, the policy's @id) and what, in Cedar's words; `errors` are them as sentences."""

    def __init__(self, problems: list[PolicyProblem]):
        self.problems = problems
        self.errors = [str(problem) for problem in problems]
        super().__init__("; ".join(self.errors))


@dataclass(frozen=True)
class PolicyProblem:
    line: int
    column: int
    number: int  # the policy's place in the text, from 1
    policy_id: str  # its @id annotation, "" without one
    message: str

    def __str__(self) -> str:
        which = f'@id("{self.policy_id}")' if self.policy_id else "no @id"
        return (
            f"line {self.line}, column {self.column} (policy {self.number}, {which}): "
            f"{self.message}"
        )


@dataclass(frozen=True)
class _Statement:
    start: int  # offset of its first character (annotations included)
    text: str


def _statements(text: str) -> list[_Statement]:
    """The policy statements of a Cedar text, in order: each ends at a `;` outside strings and
    `//` comments (a last one without its `;` counts too). Cedar numbers them policy0, ..."""
    statements, start, index, in_string = [], None, 0, False
    while index < len(text):
        char = text[index]
        if in_string:
            if char == "\\":
                index += 1
            elif char == '"':
                in_string = False
        elif text.startswith("//", index):
            newline = text.find("\n", index)
            index = len(text) if newline < 0 else newline
            continue
        elif not char.isspace():
            if start is None:
                start = index
            if char == '"':
                in_string = True
            elif char == ";":
                statements.append(_Statement(start, text[start : index + 1]))
                start = None
        index += 1
    if start is not None:
        statements.append(_Statement(start, text[start:]))
    return statements


_ID_ANNOTATION = re.compile(r'@id\s*\(\s*"((?:[^"\\]|\\.)*)"\s*\)')
_QUOTED = re.compile(r"`([^`]+)`")


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _locate(text: str, statement: _Statement, number: int, message: str) -> PolicyProblem:
    """Cedar (cedarpy 4.12) names the policy but gives no position: point at the first thing
    the message quotes (`colour`, `Action::"nope"`, the invalid variable) inside the policy,
    or at the policy's start."""
    found = _ID_ANNOTATION.search(statement.text)
    policy_id = found.group(1) if found else ""
    wanted = [quoted for quoted in _QUOTED.findall(message) if quoted != f"policy{number}"]
    if ": " in message:
        wanted.append(message.rsplit(": ", 1)[1].strip())
    offset = statement.start
    body_start = found.end() if found else 0  # not the annotation's own words
    for needle in wanted:
        at = statement.text.find(needle, body_start)
        if needle and at >= 0:
            offset = statement.start + at
            break
    else:
        if "end of input" in message:
            offset = statement.start + len(statement.text.rstrip())
    line, column = _position(text, offset)
    message = re.sub(r"^\[policy\d+\] for policy `policy\d+`, ", "", message)
    return PolicyProblem(line, column, number + 1, policy_id, message)


def policy_text_problems(text: str, kind: str = "request") -> list[PolicyProblem]:
    """Everything wrong with a policy text of this kind (`request` or `drift`, each against its
    own schema), each with its line, column and policy @id."""
    if kind not in SCHEMAS:
        return [PolicyProblem(1, 1, 1, "", f"unknown policy kind {kind!r}")]
    try:
        result = cedarpy.validate_policies(text, SCHEMAS[kind])
    except Exception as exc:  # cedarpy raises plain exceptions on syntax errors
        result, parse_error = None, str(exc)
    else:
        parse_error = None
    statements = _statements(text)
    if result is None or (
        not result.validation_passed
        and any("parse error" in str(error).lower() for error in result.errors)
    ):
        # A syntax error names no policy: parse the statements one by one to find the first
        # that fails.
        for number, statement in enumerate(statements):
            try:
                cedarpy.policies_to_json_str(statement.text)
            except Exception as exc:
                return [_locate(text, statement, number, str(exc))]
        message = parse_error or "; ".join(str(error) for error in result.errors)
        return [PolicyProblem(1, 1, 1, "", message.replace("Policy parse error: ", ""))]
    if result.validation_passed:
        return []
    problems = []
    for error in result.errors:
        number = re.match(r"\[policy(\d+)\]", str(error))
        index = int(number.group(1)) if number else 0
        statement = statements[index] if index < len(statements) else _Statement(0, text)
        problem = _locate(text, statement, index, str(error))
        if problem not in problems:
            problems.append(problem)
    return problems or [PolicyProblem(1, 1, 1, "", "invalid policy")]


def validate_policy_text(text: str, kind: str = "request") -> None:
    problems = policy_text_problems(text, kind)
    if problems:
        raise PolicyTextError(problems)


@dataclass(frozen=True)
class PolicyFacts:
    """Everything a decision may depend on, already read from the database."""

    agent_id: str
    agent_name: str
    agent_status: str
    sponsor: str
    team: str
    privilege_name: str
    resource: str
    action: str
    risk: str
    risk_level: int
    max_duration_seconds: int
    approvals_required: int
    toxic_with: tuple[str, ...]
    intent: dict
    duration_seconds: int
    environment: str
    hour_utc: int
    weekday: int
    initiated_by: str
    held_privileges: tuple[str, ...]
    is_extension: bool = False
    delegation_depth: int = 0
    root_agent: str = ""
    root_approver: str = ""
    chain: tuple[str, ...] = ()
    crosses_sponsor: bool = False
    # Eligibility (approvals/services/facts.py): absent means not eligible, so policy denies.
    eligible_for: tuple[str, ...] = ()
    eligible: bool = False
    eligibility_ended: bool = False
    eligibility_max_duration_seconds: int = 0
    eligibility_environment: str = ""
    eligibility_ends: str = ""


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill_reason(reason: str, facts: PolicyFacts) -> str:
    """A policy's @reason with the request's words put in: {agent}, {privilege}, {duration},
    {environment}, {eligibility_max_duration}, {eligibility_environment}, {eligibility_ends}.
    Anything else in braces stays as written."""
    words = {
        "agent": facts.agent_name,
        "privilege": facts.privilege_name,
        "duration": duration_words(facts.duration_seconds),
        "environment": facts.environment or "no environment",
        "eligibility_max_duration": duration_words(facts.eligibility_max_duration_seconds),
        "eligibility_environment": facts.eligibility_environment,
        "eligibility_ends": facts.eligibility_ends,
    }
    return _PLACEHOLDER.sub(lambda found: words.get(found.group(1), found.group(0)), reason)


@dataclass(frozen=True)
class PolicyOutcome:
    outcome: str  # auto_approve | request | deny
    policy_ids: list[str]
    reason: str
    approvals_required: int  # the larger of the privilege's count and the policy's ask
    # The largest `@approvals` among the policies that routed the request to people, and whose.
    policy_approvals: int = 0
    policy_approvals_id: str = ""


@dataclass
class CompiledPolicies:
    generation: int
    policy_set: cedarpy.PolicySet
    annotations: dict[str, dict[str, str]] = field(default_factory=dict)

    def label(self, policy_id: str) -> str:
        return self.annotations.get(policy_id, {}).get("id", policy_id)

    def reasons(self, policy_ids: list[str]) -> list[str]:
        return [
            self.annotations.get(pid, {}).get("reason", f"Policy {self.label(pid)} applied.")
            for pid in policy_ids
        ]


def compile_policies(named_texts: list[tuple[str, str]], generation: int) -> CompiledPolicies:
    """Merge several named policy texts into one set with ids that say where each came from."""
    static = {}
    annotations = {}
    for name, text in named_texts:
        document = json.loads(cedarpy.policies_to_json_str(text))
        for local_id, policy in document.get("staticPolicies", {}).items():
            policy_id = f"{name}/{local_id}"
            static[policy_id] = policy
            annotations[policy_id] = policy.get("annotations", {}) or {}
    policy_set = cedarpy.PolicySet.from_json_str(
        json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []})
    )
    return CompiledPolicies(generation=generation, policy_set=policy_set, annotations=annotations)


def _entities_json(facts: PolicyFacts) -> str:
    return json.dumps(
        [
            {"uid": {"type": "Team", "id": facts.team}, "attrs": {}, "parents": []},
            {"uid": {"type": "Sponsor", "id": facts.sponsor}, "attrs": {}, "parents": []},
            {
                "uid": {"type": "Agent", "id": facts.agent_id},
                "attrs": {
                    "name": facts.agent_name,
                    "status": facts.agent_status,
                    "sponsor": {"__entity": {"type": "Sponsor", "id": facts.sponsor}},
                    "team": {"__entity": {"type": "Team", "id": facts.team}},
                    "eligible_for": list(facts.eligible_for),
                },
                "parents": [{"type": "Team", "id": facts.team}],
            },
            {
                "uid": {"type": "Privilege", "id": facts.privilege_name},
                "attrs": {
                    "name": facts.privilege_name,
                    "resource": facts.resource,
                    "action": facts.action,
                    "risk": facts.risk,
                    "risk_level": facts.risk_level,
                    "max_duration_seconds": facts.max_duration_seconds,
                    "approvals_required": facts.approvals_required,
                    "toxic_with": list(facts.toxic_with),
                },
                "parents": [],
            },
        ]
    )


def _context(facts: PolicyFacts) -> dict:
    return {
        "intent": {
            "action": facts.intent.get("action", ""),
            "target": facts.intent.get("target", ""),
            "justification": facts.intent.get("justification", ""),
        },
        "duration_seconds": facts.duration_seconds,
        "environment": facts.environment,
        "hour_utc": facts.hour_utc,
        "weekday": facts.weekday,
        "initiated_by": facts.initiated_by,
        "held_privileges": list(facts.held_privileges),
        "is_extension": facts.is_extension,
        "delegated": facts.delegation_depth > 0,
        "delegation_depth": facts.delegation_depth,
        "root_agent": facts.root_agent or facts.agent_id,
        "root_approver": facts.root_approver,
        "chain": list(facts.chain),
        "crosses_sponsor": facts.crosses_sponsor,
        "eligibility": {
            "eligible": facts.eligible,
            "ended": facts.eligibility_ended,
            "max_duration_seconds": facts.eligibility_max_duration_seconds,
            "environment": facts.eligibility_environment,
        },
    }


@functools.lru_cache(maxsize=1024)
def _parsed_entities(entities_json: str) -> cedarpy.Entities:
    # The same agent asking about the same privilege builds the same entities: parse them once.
    return cedarpy.Entities.from_json_str(entities_json)


def decide(compiled: CompiledPolicies, facts: PolicyFacts) -> PolicyOutcome:
    """Custody's policy decision for one request: one batched Cedar call, two questions."""
    principal = {"type": "Agent", "id": facts.agent_id}
    resource = {"type": "Privilege", "id": facts.privilege_name}
    context = _context(facts)
    entities = _parsed_entities(_entities_json(facts))
    asked, automatic = cedarpy.is_authorized_batch(
        [
            {"principal": principal, "action": REQUEST, "resource": resource, "context": context},
            {
                "principal": principal,
                "action": AUTO_APPROVE,
                "resource": resource,
                "context": context,
            },
        ],
        compiled.policy_set,
        entities,
    )
    errors = asked.diagnostics.errors + automatic.diagnostics.errors
    if errors:
        return PolicyOutcome(
            "deny",
            [],
            "Policy evaluation failed, so Custody denies "
            "(fail closed): " + "; ".join(map(str, errors))[:500],
            facts.approvals_required,
        )
    if not asked.allowed:
        ids = asked.diagnostics.reasons
        reason = " ".join(compiled.reasons(ids)) if ids else "No policy permits this request."
        return PolicyOutcome(
            "deny",
            [compiled.label(pid) for pid in ids],
            fill_reason(reason, facts),
            facts.approvals_required,
        )
    if automatic.allowed:
        ids = automatic.diagnostics.reasons
        return PolicyOutcome(
            "auto_approve",
            [compiled.label(pid) for pid in ids],
            fill_reason(" ".join(compiled.reasons(ids)), facts),
            facts.approvals_required,
        )
    ids = asked.diagnostics.reasons
    # A forbid that blocked the automatic path is part of why people must decide.
    blockers = automatic.diagnostics.reasons
    # One rule for the count: the larger of the privilege's and the policies' `@approvals`.
    asked_by, asks = "", 0
    for pid in ids:
        wanted = compiled.annotations.get(pid, {}).get("approvals")
        if wanted and wanted.isdigit() and int(wanted) > asks:
            asked_by, asks = compiled.label(pid), int(wanted)
    return PolicyOutcome(
        "request",
        [compiled.label(pid) for pid in [*blockers, *ids]],
        fill_reason(" ".join(compiled.reasons([*blockers, *ids])), facts),
        max(facts.approvals_required, asks),
        asks,
        asked_by,
    )


# --- The process-wide cache of the compiled set --------------------------------------------

_lock = threading.Lock()
_compiled: CompiledPolicies | None = None


def current_policies() -> CompiledPolicies:
    """The compiled enabled request policies, rebuilt only when the database generation
    moved."""
    from approvals.models import PolicySetState

    generation = (
        PolicySetState.objects.filter(id=1).values_list("generation", flat=True).first() or 0
    )
    return policies_at(generation)


def policies_at(generation: int) -> CompiledPolicies:
    """The compiled set for a generation the caller just read (in its own statement)."""
    global _compiled
    from approvals.models import Policy

    compiled = _compiled
    if compiled is not None and compiled.generation == generation:
        return compiled
    with _lock:
        if _compiled is not None and _compiled.generation == generation:
            return _compiled
        rows = (
            Policy.objects.filter(enabled=True, kind=Policy.Kind.REQUEST)
            .order_by("name")
            .values_list("name", "text")
        )
        _compiled = compile_policies(list(rows), generation)
        return _compiled


# --- Memoised decisions (introspection) ------------------------------------------------------
#
# Introspection runs per tool call on every resource server and asks the same question again
# and again: may this agent still hold this privilege for this request? The answer is a pure
# function of the compiled policy set (its generation) and the facts (PolicyFacts: the agent,
# its status, sponsor and team, the privilege and its toxic pairs, the request's intent,
# duration and context, the chain, what the agent holds live, its eligibility, the hour and
# weekday). So it is memoised per process under a key made of exactly those: the generation
# and every field of the facts. Nothing is ever invalidated by hand, and nothing can be
# forgotten: the facts are read fresh from the database at every call (one statement,
# approvals/services/facts.py: introspection_read), so a suspension, a revocation, a policy
# change, an eligibility removed or changed, a grant issued or ended, or the clock passing an
# hour or an eligibility's end gives a new key, in every process at its very next call. What
# is saved is Cedar's evaluation and the entity JSON (~0.2 ms), never a read.

_MEMO_SIZE = 4096
_memo: dict[tuple, PolicyOutcome] = {}
_memo_lock = threading.Lock()
_FACT_FIELDS = tuple(PolicyFacts.__dataclass_fields__)


def _facts_key(facts: PolicyFacts) -> tuple:
    return tuple(
        json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        for value in (getattr(facts, name) for name in _FACT_FIELDS)
    )


def decide_memoised(compiled: CompiledPolicies, facts: PolicyFacts) -> PolicyOutcome:
    """`decide`, remembered under (generation, every fact); see above."""
    key = (compiled.generation, _facts_key(facts))
    outcome = _memo.get(key)
    if outcome is None:
        outcome = decide(compiled, facts)
        with _memo_lock:
            if len(_memo) >= _MEMO_SIZE:
                _memo.clear()  # bounded; a cleared memo only costs one Cedar call per key
            _memo[key] = outcome
    return outcome
