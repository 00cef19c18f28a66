"""Compile a PolicyDocument into an immutable, indexed Snapshot.

Everything that can fail fails here, before a snapshot exists: unknown attributes, bad regexes
(RE2: linear time, bounded memory), missing lists or limits, duplicate ids. A snapshot is either
complete or not built at all, so a bad change is never half-applied.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2
from pydantic import ValidationError

from policy.core import adaptive, attributes, indexing
from policy.core.documents import (
    LimitDoc,
    ListDoc,
    MatcherDoc,
    PolicyDocument,
    RuleDoc,
    check_attribute,
    describe,
)
from policy.core.indexing import CompiledLimit, CompiledRule, GroupPlan, LeafPlan, Plan, Predicate, StageIndex
from policy.structs import CheckInput, Decision, PolicyError

try:
    from remixer.kit.native.evaluator import Program, configure
except ImportError:  # built without a C compiler: matching.evaluate runs the Python predicates
    Program = None  # type: ignore[assignment,misc]
else:
    configure(plain_fields=attributes.PLAIN_FIELDS, path_of=attributes.path_only)

COMPILED_EVALUATOR = Program is not None

__all__ = [
    "COMPILED_EVALUATOR",
    "CompiledLimit",
    "CompiledRule",
    "Predicate",
    "Snapshot",
    "StageIndex",
    "compile_snapshot",
]


_MAX_PATTERN = 2048
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 1 << 20
_RE2_OPTIONS.log_errors = False
_UNIT_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    deny: StageIndex
    rate_limit: StageIndex
    allow: StageIndex
    default: Decision
    # The attributes any rule reads, in a fixed order: the decision cache key (Mixer's referenced attributes).
    referenced: tuple[str, ...]
    cache_key_getters: tuple[attributes.Getter, ...]
    limits: Mapping[str, CompiledLimit]
    document: PolicyDocument
    rule_count: int = field(default=0)
    jwt_header: str = "x-jwt-payload"  # where request.jwt.* claims come from (lower case)
    # The same rules compiled for the C evaluator (remixer.kit.native.evaluator); None when it is not built.
    program: Any = None

    def cache_key(self, req: CheckInput) -> tuple[attributes.AttributeValue, ...]:
        return tuple([get(req) for get in self.cache_key_getters])


# ---- matchers ------------------------------------------------------------------------------------

# A string test, and how the compiled evaluator runs it: an op it does in C (exact, prefix, suffix,
# in; regex: its required literals first; network: IPv4 text) with its operand, or ("test", None):
# call the test.
StringTest = tuple[Callable[[str], bool], str, Any]


def _glob_to_regex(glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def _regex(pattern: str, ignore_case: bool) -> StringTest:
    if len(pattern) > _MAX_PATTERN:
        raise ValueError(f"pattern longer than {_MAX_PATTERN} characters")
    options = re2.Options()
    options.max_mem = _RE2_OPTIONS.max_mem
    options.log_errors = False
    options.case_sensitive = not ignore_case
    # The engine itself, compiled once: google-re2's wrapper builds a Match object and offset tables on
    # every fullmatch (4.4 µs on the benchmark policy's path regex); an anchored Match on the UTF-8
    # bytes answers the same yes/no in 1.4 µs.
    engine = re2._re2.RE2(pattern.encode(), options)
    if not engine.ok():
        raise ValueError(f"invalid RE2 regex: {engine.error().decode(errors='replace')}")
    match = engine.Match
    both = re2._re2.RE2.Anchor.ANCHOR_BOTH
    # Most values miss a literal the pattern needs: that answer costs a substring search, not a call
    # into RE2 (whose binding alone is most of a cold Check's evaluation).
    needed = () if ignore_case else indexing.required_literals(pattern)

    def test(value: str) -> bool:
        for literal in needed:
            if literal not in value:
                return False
        data = value.encode()
        whole: tuple[int, int] = match(both, data, 0, len(data))[0]
        return whole[0] != -1

    return test, "regex", needed


def _network_test(entries: Iterable[str]) -> StringTest:
    """Membership of an IP in CIDRs/IPs: one set lookup per distinct prefix length. The compiled
    evaluator reads dotted-quad IPv4 text itself against the same (version, length, keys) groups."""
    by_length: dict[tuple[int, int], set[int]] = {}
    for entry in entries:
        try:
            net = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
        bits = net.max_prefixlen
        by_length.setdefault((net.version, net.prefixlen), set()).add(
            int(net.network_address) >> (bits - net.prefixlen)
        )
    groups = tuple(
        (version, length, frozenset(keys)) for (version, length), keys in sorted(by_length.items())
    )

    parsed: dict[str, tuple[int, int, int] | None] = {}  # address text -> (version, bits, int); bounded

    def test(value: str) -> bool:
        if value in parsed:
            found = parsed[value]
        else:
            try:
                addr = ipaddress.ip_address(value.strip("[]"))
                found = (addr.version, addr.max_prefixlen, int(addr))
            except ValueError:
                found = None
            if len(parsed) >= 65536:
                parsed.clear()
            parsed[value] = found
        if found is None:
            return False
        version, bits, as_int = found
        for v, length, keys in groups:  # noqa: SIM110 (a loop, not any(genexpr): runs every Check)
            if v == version and (as_int >> (bits - length)) in keys:
                return True
        return False

    return test, "network", groups


def _string_test(matcher: MatcherDoc, lists: Mapping[str, ListDoc]) -> StringTest:
    fold = matcher.ignore_case
    op = matcher.operator
    if op == "exact":
        want = matcher.exact or ""
        if fold:
            return (lambda v: v.lower() == want.lower()), "test", None
        return (lambda v: v == want), "exact", want
    if op == "prefix":
        start = matcher.prefix or ""
        if fold:
            return (lambda v: v.lower().startswith(start.lower())), "test", None
        return (lambda v: v.startswith(start)), "prefix", start
    if op == "suffix":
        end = matcher.suffix or ""
        if fold:
            return (lambda v: v.lower().endswith(end.lower())), "test", None
        return (lambda v: v.endswith(end)), "suffix", end
    if op == "glob":
        return _regex(_glob_to_regex(matcher.glob or ""), fold)
    if op == "regex":
        return _regex(matcher.regex or "", fold)
    if op == "in_":
        return _member_test(matcher.in_ or (), fold)
    if op == "cidr":
        return _network_test(matcher.cidr or ())
    if op == "in_list":
        name = matcher.in_list or ""
        if name not in lists:
            raise ValueError(f"list {name!r} does not exist")
        listed = lists[name]
        if listed.kind in ("ip", "cidr"):
            return _network_test(listed.entries)
        return _member_test(listed.entries, fold)
    raise ValueError(f"operator {op} is not a string test")


def _member_test(values: Iterable[str], fold: bool) -> StringTest:
    if fold:
        folded = frozenset(v.lower() for v in values)
        return (lambda v: v.lower() in folded), "test", None
    members = frozenset(values)
    return (lambda v: v in members), "in", members


def _leaf(
    attribute: str, raw: Any, *, lists: Mapping[str, ListDoc], jwt_header: str, used: set[str]
) -> tuple[Predicate, LeafPlan]:
    name = check_attribute(attribute)
    matcher = MatcherDoc.model_validate(raw)
    used.add(name)
    get = attributes.getter(name, jwt_header=jwt_header)
    multi = name.startswith("request.jwt.")
    if matcher.present is not None:
        want_present = matcher.present
        plan = LeafPlan(name, get, "present", want_present, None, multi)
        return (lambda r: (get(r) is not None) == want_present), plan
    test, op, operand = _string_test(matcher, lists)

    def leaf(req: CheckInput) -> bool:
        value = get(req)
        if value is None:
            return False
        if multi and isinstance(value, tuple):
            return any(test(v) for v in value)
        return test(value)  # type: ignore[arg-type]

    return leaf, LeafPlan(name, get, op, operand, test, multi)


def _compile_match(
    match: Any, *, path: str, lists: Mapping[str, ListDoc], jwt_header: str, used: set[str]
) -> tuple[Predicate, Plan]:
    if not isinstance(match, dict):
        raise PolicyError(f"field {path}: a match is a mapping of attribute: matcher (and all/any/not)")
    parts: list[Predicate] = []
    plans: list[Plan] = []
    for key, value in match.items():
        where = f"{path}.{key}"
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                raise PolicyError(f"field {where}: '{key}' takes a non-empty list of matches")
            subs, sub_plans = zip(
                *(
                    _compile_match(v, path=f"{where}[{i}]", lists=lists, jwt_header=jwt_header, used=used)
                    for i, v in enumerate(value)
                ),
                strict=True,
            )
            parts.append(_all(subs) if key == "all" else _any(subs))
            plans.append(GroupPlan(key, sub_plans))
        elif key == "not":
            inner, inner_plan = _compile_match(
                value, path=where, lists=lists, jwt_header=jwt_header, used=used
            )
            parts.append(lambda r, inner=inner: not inner(r))  # type: ignore[misc]
            plans.append(GroupPlan("not", (inner_plan,)))
        else:
            try:
                leaf, leaf_plan = _leaf(str(key), value, lists=lists, jwt_header=jwt_header, used=used)
            except ValidationError as exc:
                raise PolicyError(
                    f"field {where}: {describe(exc, None).removeprefix('field (item): ')}"
                ) from None
            except ValueError as exc:
                raise PolicyError(f"field {where}: {exc}") from None
            parts.append(leaf)
            plans.append(leaf_plan)
    return _all(parts), GroupPlan("all", tuple(plans))


def _all(parts: Sequence[Predicate]) -> Predicate:
    if not parts:
        return lambda r: True
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda r: a(r) and b(r)
    tup = tuple(parts)
    return lambda r: all(p(r) for p in tup)


def _any(parts: Sequence[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    tup = tuple(parts)
    return lambda r: any(p(r) for p in tup)


def _decision_for(rule: RuleDoc) -> Decision | None:
    if rule.action == "deny":
        deny = rule.deny
        return Decision(
            kind="deny",
            status=deny.status if deny else 403,
            rule_id=rule.id,
            body=deny.body if deny else "",
            response_headers=tuple(deny.headers.items()) if deny else (),
        )
    if rule.action == "allow":
        allow = rule.allow
        return Decision(
            kind="allow",
            status=200,
            rule_id=rule.id,
            upstream_headers=tuple(allow.headers.items()) if allow else (),
            remove_headers=tuple(allow.remove_headers) if allow else (),
            response_headers=tuple(allow.response_headers.items()) if allow else (),
        )
    return None


def _compile_limit(doc: LimitDoc, jwt_header: str) -> CompiledLimit:
    return CompiledLimit(
        name=doc.name,
        requests=doc.requests,
        period=_UNIT_SECONDS[doc.unit],
        algorithm=doc.algorithm,
        shadow=doc.shadow,
        descriptor=tuple(attributes.getter(a, jwt_header=jwt_header) for a in doc.descriptor),
    )


def _unique(names: Iterable[str], kind: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PolicyError(f"{kind} {name!r}: defined twice")
        seen.add(name)


def compile_snapshot(
    document: PolicyDocument,
    *,
    revision: int,
    default_decision: str = "allow",
    default_deny_status: int = 403,
    jwt_header: str = "x-jwt-payload",
    max_list_entries: int = 100_000,
) -> Snapshot:
    _unique((x.name for x in document.adaptive), "adaptive limit")
    source, document = document, adaptive.expand(document)
    _unique((r.id for r in document.rules), "rule")
    _unique((x.name for x in document.lists), "list")
    _unique((x.name for x in document.limits), "limit")
    lists = {x.name: x for x in document.lists}
    errors: list[str] = []  # every item's first error, so that one edit can fix them all
    for listed in document.lists:
        if len(listed.entries) > max_list_entries:
            errors.append(
                f"list {listed.name!r}: field entries: {len(listed.entries)} entries, over the "
                f"{max_list_entries} allowed (policy.max_list_entries)"
            )
        elif listed.kind in ("ip", "cidr"):
            try:
                _network_test(listed.entries)
            except ValueError as exc:
                errors.append(f"list {listed.name!r}: field entries: {exc}")
    limits = {x.name: _compile_limit(x, jwt_header) for x in document.limits}
    used: set[str] = set()
    staged: dict[str, list[tuple[CompiledRule, indexing.IndexKey | None]]] = {
        "deny": [],
        "rate_limit": [],
        "allow": [],
    }
    ordered = sorted(enumerate(document.rules), key=lambda pair: (pair[1].priority, pair[0]))
    for ordinal, (_, rule) in enumerate(ordered):
        try:
            predicate, plan = _compile_match(
                rule.match, path="match", lists=lists, jwt_header=jwt_header, used=used
            )
        except PolicyError as exc:
            errors.append(f"rule {rule.id!r}: {exc}")
            continue
        limit = None
        if rule.action == "rate_limit":
            if rule.limit not in limits:
                errors.append(f"rule {rule.id!r}: field limit: limit {rule.limit!r} does not exist")
                continue
            limit = limits[rule.limit]
        compiled = CompiledRule(
            rule_id=rule.id,
            stage=rule.action,
            ordinal=ordinal,
            dry_run=rule.dry_run,
            predicate=predicate,
            decision=_decision_for(rule),
            limit=limit,
            plan=plan,
        )
        staged[rule.action].append((compiled, indexing.index_key(rule.match, lists)))
    if errors:
        raise PolicyError("; ".join(errors))
    default = (
        Decision(kind="allow", status=200, rule_id="default")
        if default_decision == "allow"
        else Decision(kind="deny", status=default_deny_status, rule_id="default")
    )
    referenced = tuple(sorted(used))
    deny, rate_limit, allow = (
        indexing.build_index(staged[stage], jwt_header=jwt_header)
        for stage in ("deny", "rate_limit", "allow")
    )
    return Snapshot(
        revision=revision,
        deny=deny,
        rate_limit=rate_limit,
        allow=allow,
        default=default,
        referenced=referenced,
        cache_key_getters=tuple(attributes.getter(a, jwt_header=jwt_header) for a in referenced),
        limits=limits,
        document=source,
        rule_count=len(document.rules),
        jwt_header=jwt_header,
        program=Program(deny, rate_limit, allow, default) if Program is not None else None,
    )
