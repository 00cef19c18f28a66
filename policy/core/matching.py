"""Evaluate a Snapshot against one request. The order is fixed and documented:

1. deny rules, in priority order: the first enforced match denies (status, body, headers);
2. rate_limit rules: every enforced match consumes from its limit (the caller applies the quotas);
   any exhausted, non-shadow limit turns the outcome into 429;
3. allow rules: the first enforced match allows, with its header mutations;
4. otherwise the configured default (allow, or deny with its status).

Dry-run rules are evaluated at every stage and reported, never enforced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from policy.core.attributes import path_only
from policy.core.rules import CompiledLimit, CompiledRule, Snapshot, StageIndex
from policy.structs import CheckInput, Decision, TraceStep

__all__ = ["Evaluation", "QuotaRequest", "evaluate", "quota_key"]

_MAX_KEY = 512


@dataclass(frozen=True, slots=True)
class QuotaRequest:
    rule_id: str
    limit: CompiledLimit
    key: str  # counter key: limit name + descriptor values


@dataclass(frozen=True, slots=True)
class Evaluation:
    decision: Decision  # the outcome if every quota admits the request
    quotas: tuple[QuotaRequest, ...] = ()
    dry_run_rules: tuple[str, ...] = ()
    trace: tuple[TraceStep, ...] = ()

    @property
    def cacheable(self) -> bool:
        # A decision that consumed quota must be recomputed every time (never cached as an allow).
        return not self.quotas


def quota_key(limit: CompiledLimit, req: CheckInput) -> str:
    if not limit.descriptor:
        return limit.name
    values = []
    for get in limit.descriptor:
        value = get(req)
        values.append("" if value is None else value if isinstance(value, str) else ",".join(value))
    key = limit.name + "|" + "|".join(values)
    # Descriptor values come off the wire (headers can be 64 KiB): bound what a counter key holds.
    if len(key) > _MAX_KEY:
        key = limit.name + "#" + hashlib.sha256(key.encode(errors="replace")).hexdigest()
    return key


def _scan(
    index: StageIndex,
    path: str,
    req: CheckInput,
    dry: list[str],
    trace: list[TraceStep],
    *,
    first: bool,
) -> list[CompiledRule]:
    matched: list[CompiledRule] = []
    for rule in index.candidates(path, req):
        hit = rule.predicate(req)
        trace.append(TraceStep(rule.stage, rule.rule_id, hit, "dry_run" if rule.dry_run else ""))
        if not hit:
            continue
        if rule.dry_run:
            dry.append(rule.rule_id)
            continue
        matched.append(rule)
        if first:
            break
    return matched


def evaluate(snapshot: Snapshot, req: CheckInput, *, explain: bool = False) -> Evaluation:
    if explain:
        return _evaluate_traced(snapshot, req)
    if snapshot.program is not None:  # the same evaluation in C (remixer/kit/native/evaluator.pyx)
        return _compiled(snapshot, req)
    # The Check hot path: same order and outcome as _evaluate_traced, without the trace bookkeeping;
    # a decision with no dry-run matches and no quota reuses the rule's prebuilt Evaluation.
    path = path_only(req)
    dry: list[str] | None = None
    if snapshot.deny.size:
        for rule in snapshot.deny.candidates(path, req):
            if rule.predicate(req):
                if rule.dry_run:
                    dry = [rule.rule_id] if dry is None else [*dry, rule.rule_id]
                elif rule.decision is not None:
                    return _outcome(rule.decision, (), dry)
    quotas: tuple[QuotaRequest, ...] = ()
    if snapshot.rate_limit.size:
        for rule in snapshot.rate_limit.candidates(path, req):
            if rule.predicate(req):
                if rule.dry_run:
                    dry = [rule.rule_id] if dry is None else [*dry, rule.rule_id]
                elif rule.limit:
                    quotas = (*quotas, QuotaRequest(rule.rule_id, rule.limit, quota_key(rule.limit, req)))
    decision = snapshot.default
    if snapshot.allow.size:
        for rule in snapshot.allow.candidates(path, req):
            if rule.predicate(req):
                if rule.dry_run:
                    dry = [rule.rule_id] if dry is None else [*dry, rule.rule_id]
                elif rule.decision is not None:
                    decision = rule.decision
                    break
    return _outcome(decision, quotas, dry)


def _compiled(snapshot: Snapshot, req: CheckInput) -> Evaluation:
    found = snapshot.program.run(req)
    if isinstance(found, Decision):
        return _outcome(found, (), None)
    decision, limited, dry_run = found
    return _outcome(
        decision,
        tuple(QuotaRequest(r.rule_id, r.limit, quota_key(r.limit, req)) for r in limited if r.limit),
        dry_run,
    )


def _outcome(decision: Decision, quotas: tuple[QuotaRequest, ...], dry: Sequence[str] | None) -> Evaluation:
    if dry is None and not quotas:
        plain = _PLAIN.get(decision)
        if plain is None:
            if len(_PLAIN) >= 4096:  # Decisions live as long as their snapshot: bound the memo
                _PLAIN.clear()
            plain = _PLAIN[decision] = Evaluation(decision)
        return plain
    return Evaluation(decision, quotas, tuple(dry or ()))


# Decision (identity-hashed, one per rule of a snapshot) -> its Evaluation without quotas or dry runs.
_PLAIN: dict[Decision, Evaluation] = {}


def _evaluate_traced(snapshot: Snapshot, req: CheckInput) -> Evaluation:
    """POST /v1/evaluate: every rule looked at, in order, with whether it matched."""
    path = path_only(req)
    dry: list[str] = []
    trace: list[TraceStep] = []
    if snapshot.deny.size:
        denied = _scan(snapshot.deny, path, req, dry, trace, first=True)
        if denied and denied[0].decision is not None:
            return Evaluation(denied[0].decision, (), tuple(dry), tuple(trace))
    quotas: tuple[QuotaRequest, ...] = ()
    if snapshot.rate_limit.size:
        limited = _scan(snapshot.rate_limit, path, req, dry, trace, first=False)
        quotas = tuple(
            QuotaRequest(rule.rule_id, rule.limit, quota_key(rule.limit, req))
            for rule in limited
            if rule.limit
        )
    decision = snapshot.default
    if snapshot.allow.size:
        allowed = _scan(snapshot.allow, path, req, dry, trace, first=True)
        if allowed and allowed[0].decision is not None:
            decision = allowed[0].decision
    if decision is snapshot.default:
        trace.append(TraceStep("default", "default", True, decision.kind))
    return Evaluation(decision, quotas, tuple(dry), tuple(trace))
