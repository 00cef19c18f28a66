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

from policy.core import attributes
from policy.core.documents import (
    LimitDoc,
    ListDoc,
    MatcherDoc,
    PolicyDocument,
    RuleDoc,
    check_attribute,
    describe,
)
from policy.structs import CheckInput, Decision, PolicyError

__all__ = ["CompiledLimit", "CompiledRule", "Predicate", "Snapshot", "StageIndex", "compile_snapshot"]

Predicate = Callable[[CheckInput], bool]

_MAX_PATTERN = 2048
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 1 << 20
_RE2_OPTIONS.log_errors = False
_UNIT_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_COMBINATORS = ("all", "any", "not")


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    name: str
    requests: int
    period: float  # seconds
    algorithm: str  # token_bucket | sliding_window
    shadow: bool
    descriptor: tuple[attributes.Getter, ...]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule_id: str
    stage: str  # deny | rate_limit | allow
    ordinal: int  # position in evaluation order within its stage
    dry_run: bool
    predicate: Predicate
    decision: Decision | None  # deny/allow: the prebuilt outcome
    limit: CompiledLimit | None  # rate_limit: what to consume


@dataclass(frozen=True, slots=True)
class StageIndex:
    """Rules of one stage, bucketed by a literal value their top-level conjunction requires.

    - by_exact: request.path exact literals;
    - by_segment: path prefixes keyed by their first path segment ('/shop/cart/' -> 'shop'),
      each bucket a list of (prefix, rules) tested with startswith; short prefixes go in `short`;
    - by_value: (attribute getter, {value: rules}) for `exact`/`in` matchers on any other attribute;
    - always: rules with no usable literal.
    A request gathers only the buckets its values select, then runs those rules in evaluation order.
    """

    always: tuple[CompiledRule, ...]
    by_exact: Mapping[str, tuple[CompiledRule, ...]]
    by_segment: Mapping[str, tuple[tuple[str, tuple[CompiledRule, ...]], ...]]
    short: tuple[tuple[str, tuple[CompiledRule, ...]], ...]
    by_value: tuple[tuple[attributes.Getter, Mapping[str, tuple[CompiledRule, ...]]], ...]
    size: int

    def candidates(self, path: str, req: CheckInput) -> Sequence[CompiledRule]:
        """Rules that may match (path without query), in evaluation order."""
        found: list[tuple[CompiledRule, ...]] = []
        if self.always:
            found.append(self.always)
        if self.by_exact:
            hit = self.by_exact.get(path)
            if hit:
                found.append(hit)
        if self.by_segment:
            cut = path.find("/", 1)
            bucket = self.by_segment.get(path[1:cut] if cut > 0 else path[1:])
            if bucket:
                for prefix, group in bucket:
                    if path.startswith(prefix):
                        found.append(group)
        for prefix, group in self.short:
            if path.startswith(prefix):
                found.append(group)
        for get, table in self.by_value:
            value = get(req)
            if value is not None:
                if isinstance(value, str):
                    hit = table.get(value)
                    if hit:
                        found.append(hit)
                else:
                    found.extend(table[v] for v in set(value) if v in table)
        if not found:
            return ()
        if len(found) == 1:
            return found[0]
        unique = {r.ordinal: r for group in found for r in group}
        return [unique[k] for k in sorted(unique)]


def _ordinal(rule: CompiledRule) -> int:
    return rule.ordinal


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

    def cache_key(self, req: CheckInput) -> tuple[attributes.AttributeValue, ...]:
        return tuple([get(req) for get in self.cache_key_getters])


# ---- matchers ------------------------------------------------------------------------------------


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


def _regex(pattern: str, ignore_case: bool) -> Callable[[str], bool]:
    if len(pattern) > _MAX_PATTERN:
        raise ValueError(f"pattern longer than {_MAX_PATTERN} characters")
    options = re2.Options()
    options.max_mem = _RE2_OPTIONS.max_mem
    options.log_errors = False
    options.case_sensitive = not ignore_case
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"invalid RE2 regex: {detail}") from None
    fullmatch = compiled.fullmatch
    return lambda value: fullmatch(value) is not None


def _network_test(entries: Iterable[str]) -> Callable[[str], bool]:
    """Membership of an IP in CIDRs/IPs: one set lookup per distinct prefix length."""
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
    groups = sorted(by_length.items())

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
        return any(v == version and (as_int >> (bits - length)) in keys for (v, length), keys in groups)

    return test


def _string_test(matcher: MatcherDoc, lists: Mapping[str, ListDoc]) -> Callable[[str], bool]:
    fold = matcher.ignore_case
    op = matcher.operator
    if op == "exact":
        want = matcher.exact or ""
        return (lambda v: v.lower() == want.lower()) if fold else (lambda v: v == want)
    if op == "prefix":
        start = matcher.prefix or ""
        return (lambda v: v.lower().startswith(start.lower())) if fold else (lambda v: v.startswith(start))
    if op == "suffix":
        end = matcher.suffix or ""
        return (lambda v: v.lower().endswith(end.lower())) if fold else (lambda v: v.endswith(end))
    if op == "glob":
        return _regex(_glob_to_regex(matcher.glob or ""), fold)
    if op == "regex":
        return _regex(matcher.regex or "", fold)
    if op == "in_":
        values = frozenset(v.lower() for v in matcher.in_ or ()) if fold else frozenset(matcher.in_ or ())
        return (lambda v: v.lower() in values) if fold else (lambda v: v in values)
    if op == "cidr":
        return _network_test(matcher.cidr or ())
    if op == "in_list":
        name = matcher.in_list or ""
        if name not in lists:
            raise ValueError(f"list {name!r} does not exist")
        listed = lists[name]
        if listed.kind in ("ip", "cidr"):
            return _network_test(listed.entries)
        members = frozenset(e.lower() for e in listed.entries) if fold else frozenset(listed.entries)
        return (lambda v: v.lower() in members) if fold else (lambda v: v in members)
    raise ValueError(f"operator {op} is not a string test")


def _leaf(
    attribute: str, raw: Any, *, lists: Mapping[str, ListDoc], jwt_header: str, used: set[str]
) -> Predicate:
    name = check_attribute(attribute)
    matcher = MatcherDoc.model_validate(raw)
    used.add(name)
    get = attributes.getter(name, jwt_header=jwt_header)
    if matcher.present is not None:
        want_present = matcher.present
        return lambda r: (get(r) is not None) == want_present
    test = _string_test(matcher, lists)
    multi = name.startswith("request.jwt.")

    def leaf(req: CheckInput) -> bool:
        value = get(req)
        if value is None:
            return False
        if multi and isinstance(value, tuple):
            return any(test(v) for v in value)
        return test(value)  # type: ignore[arg-type]

    return leaf


def _compile_match(
    match: Any, *, path: str, lists: Mapping[str, ListDoc], jwt_header: str, used: set[str]
) -> Predicate:
    if not isinstance(match, dict):
        raise PolicyError(f"field {path}: a match is a mapping of attribute: matcher (and all/any/not)")
    parts: list[Predicate] = []
    for key, value in match.items():
        where = f"{path}.{key}"
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                raise PolicyError(f"field {where}: '{key}' takes a non-empty list of matches")
            subs = [
                _compile_match(v, path=f"{where}[{i}]", lists=lists, jwt_header=jwt_header, used=used)
                for i, v in enumerate(value)
            ]
            parts.append(_all(subs) if key == "all" else _any(subs))
        elif key == "not":
            inner = _compile_match(value, path=where, lists=lists, jwt_header=jwt_header, used=used)
            parts.append(lambda r, inner=inner: not inner(r))  # type: ignore[misc]
        else:
            try:
                parts.append(_leaf(str(key), value, lists=lists, jwt_header=jwt_header, used=used))
            except ValidationError as exc:
                raise PolicyError(
                    f"field {where}: {describe(exc, None).removeprefix('field (item): ')}"
                ) from None
            except ValueError as exc:
                raise PolicyError(f"field {where}: {exc}") from None
    return _all(parts)


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


_REGEX_META = frozenset("\\.^$|?*+()[]{}")
IndexKey = tuple[str, str, tuple[str, ...]]  # (kind, attribute, literals)


def _literal_prefix(pattern: str, *, glob: bool) -> str:
    """The literal text every match must start with ('' when unknown)."""
    if glob:
        cut = min((i for i, ch in enumerate(pattern) if ch in "*?"), default=len(pattern))
        return pattern[:cut]
    if "|" in pattern or pattern.startswith("^"):
        return ""
    out: list[str] = []
    for ch in pattern:
        if ch in _REGEX_META:
            if ch in "?*{" and out:
                out.pop()  # the last literal may be optional or repeated
            break
        out.append(ch)
    return "".join(out)


def _index_key(match: dict[str, Any], lists: Mapping[str, ListDoc]) -> IndexKey | None:
    """A literal the rule's top level requires: path exact/prefix first, else any exact/in matcher."""
    path = match.get("request.path")
    if isinstance(path, dict) and not path.get("ignore_case") and len(path) == 1:
        op, value = next(iter(path.items()))
        if op == "exact" and isinstance(value, str):
            return ("path_exact", "request.path", (value,))
        prefix = ""
        if op == "prefix" and isinstance(value, str):
            prefix = value
        elif op in ("regex", "glob") and isinstance(value, str):
            prefix = _literal_prefix(value, glob=op == "glob")
        if prefix.startswith("/"):
            return ("path_prefix", "request.path", (prefix,))
    for attribute, raw in match.items():
        if attribute in ("all", "any", "not", "request.path") or not isinstance(raw, dict):
            continue
        if raw.get("ignore_case") or len(raw) != 1:
            continue
        op, value = next(iter(raw.items()))
        if op == "exact" and isinstance(value, str):
            return ("value", check_attribute(attribute), (value,))
        if op == "in" and isinstance(value, list) and all(isinstance(v, str) for v in value) and value:
            return ("value", check_attribute(attribute), tuple(value))
        listed = lists.get(value) if op == "in_list" and isinstance(value, str) else None
        if listed is not None and listed.kind == "string" and listed.entries:
            return ("value", check_attribute(attribute), tuple(listed.entries))
    return None


def _build_index(rules: Sequence[tuple[CompiledRule, IndexKey | None]], *, jwt_header: str) -> StageIndex:
    always: list[CompiledRule] = []
    exact: dict[str, list[CompiledRule]] = {}
    prefixes: dict[str, list[CompiledRule]] = {}
    values: dict[str, dict[str, list[CompiledRule]]] = {}
    for rule, key in rules:
        if key is None:
            always.append(rule)
            continue
        kind, attribute, literals = key
        if kind == "path_exact":
            exact.setdefault(literals[0], []).append(rule)
        elif kind == "path_prefix":
            prefixes.setdefault(literals[0], []).append(rule)
        else:
            table = values.setdefault(attribute, {})
            for literal in dict.fromkeys(literals):
                table.setdefault(literal, []).append(rule)
    by_segment: dict[str, list[tuple[str, tuple[CompiledRule, ...]]]] = {}
    short: list[tuple[str, tuple[CompiledRule, ...]]] = []
    for prefix, group in prefixes.items():
        cut = prefix.find("/", 1)
        if cut > 0:
            by_segment.setdefault(prefix[1:cut], []).append((prefix, tuple(group)))
        else:
            short.append((prefix, tuple(group)))
    return StageIndex(
        always=tuple(always),
        by_exact={k: tuple(v) for k, v in exact.items()},
        by_segment={k: tuple(v) for k, v in by_segment.items()},
        short=tuple(short),
        by_value=tuple(
            (attributes.getter(attribute, jwt_header=jwt_header), {k: tuple(v) for k, v in table.items()})
            for attribute, table in values.items()
        ),
        size=len(rules),
    )


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
) -> Snapshot:
    _unique((r.id for r in document.rules), "rule")
    _unique((x.name for x in document.lists), "list")
    _unique((x.name for x in document.limits), "limit")
    lists = {x.name: x for x in document.lists}
    for listed in document.lists:
        if listed.kind in ("ip", "cidr"):
            try:
                _network_test(listed.entries)
            except ValueError as exc:
                raise PolicyError(f"list {listed.name!r}: field entries: {exc}") from None
    limits = {x.name: _compile_limit(x, jwt_header) for x in document.limits}
    used: set[str] = set()
    staged: dict[str, list[tuple[CompiledRule, IndexKey | None]]] = {
        "deny": [],
        "rate_limit": [],
        "allow": [],
    }
    ordered = sorted(enumerate(document.rules), key=lambda pair: (pair[1].priority, pair[0]))
    for ordinal, (_, rule) in enumerate(ordered):
        try:
            predicate = _compile_match(
                rule.match, path="match", lists=lists, jwt_header=jwt_header, used=used
            )
        except PolicyError as exc:
            raise PolicyError(f"rule {rule.id!r}: {exc}") from None
        limit = None
        if rule.action == "rate_limit":
            if rule.limit not in limits:
                raise PolicyError(f"rule {rule.id!r}: field limit: limit {rule.limit!r} does not exist")
            limit = limits[rule.limit]
        compiled = CompiledRule(
            rule_id=rule.id,
            stage=rule.action,
            ordinal=ordinal,
            dry_run=rule.dry_run,
            predicate=predicate,
            decision=_decision_for(rule),
            limit=limit,
        )
        staged[rule.action].append((compiled, _index_key(rule.match, lists)))
    default = (
        Decision(kind="allow", status=200, rule_id="default")
        if default_decision == "allow"
        else Decision(kind="deny", status=default_deny_status, rule_id="default")
    )
    referenced = tuple(sorted(used))
    return Snapshot(
        revision=revision,
        deny=_build_index(staged["deny"], jwt_header=jwt_header),
        rate_limit=_build_index(staged["rate_limit"], jwt_header=jwt_header),
        allow=_build_index(staged["allow"], jwt_header=jwt_header),
        default=default,
        referenced=referenced,
        cache_key_getters=tuple(attributes.getter(a, jwt_header=jwt_header) for a in referenced),
        limits=limits,
        document=document,
        rule_count=len(document.rules),
    )
