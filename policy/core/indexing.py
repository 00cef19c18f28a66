"""Compiled rules and the per-stage index that picks the rules a request can possibly match.

Rules are bucketed by a literal their top-level conjunction requires (a request.path literal, a
path prefix in a segment trie, an `exact`/`in`/`in_list` value), so a Check runs only the rules
that can match, in evaluation order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policy.core import attributes
from policy.core.documents import ListDoc, check_attribute
from policy.structs import CheckInput, Decision

__all__ = [
    "CompiledLimit",
    "CompiledRule",
    "GroupPlan",
    "IndexKey",
    "LeafPlan",
    "Plan",
    "Predicate",
    "PrefixNode",
    "StageIndex",
    "build_index",
    "index_key",
    "literal_prefix",
    "required_literals",
]

Predicate = Callable[[CheckInput], bool]


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    name: str
    requests: int
    period: float  # seconds
    algorithm: str  # token_bucket | sliding_window
    shadow: bool
    descriptor: tuple[attributes.Getter, ...]


@dataclass(frozen=True, slots=True)
class LeafPlan:
    """One matcher of a rule, as data: what the compiled evaluator (remixer/kit/native/evaluator.pyx) runs.
    `op` names a test it does itself (present, exact, prefix, suffix, in; regex: the literals a match
    needs, then `test`; network: dotted-quad IPv4 against the CIDR groups, other text through `test`);
    "test" calls `test`, the same function the Python predicate calls."""

    attribute: str
    get: attributes.Getter
    op: str
    # bool (present), str (exact/prefix/suffix), frozenset[str] (in), tuple[str] (regex),
    # tuple[(ip version, prefix length, frozenset of address >> (bits - length))] (network)
    operand: Any
    test: Callable[[str], bool] | None  # None for present
    multi: bool  # the value may be a tuple (JWT claims): any element matching is a match


@dataclass(frozen=True, slots=True)
class GroupPlan:
    kind: str  # all | any | not (one part)
    parts: tuple[LeafPlan | GroupPlan, ...]


Plan = LeafPlan | GroupPlan


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule_id: str
    stage: str  # deny | rate_limit | allow
    ordinal: int  # position in evaluation order within its stage
    dry_run: bool
    predicate: Predicate
    decision: Decision | None  # deny/allow: the prebuilt outcome
    limit: CompiledLimit | None  # rate_limit: what to consume
    plan: Plan  # the predicate as data


@dataclass(frozen=True, slots=True)
class PrefixNode:
    """A path-segment trie of path prefixes. A prefix '/shop/cart/v' sits at node shop -> cart with
    the tail 'v', which the request's next segment must start with ('' for a prefix ending in '/')."""

    children: Mapping[str, PrefixNode]
    tails: tuple[tuple[str, tuple[CompiledRule, ...]], ...]

    def groups(self, path: str) -> list[tuple[CompiledRule, ...]]:
        """The rule groups whose prefix `path` starts with: one dict step per path segment."""
        found: list[tuple[CompiledRule, ...]] = []
        node = self
        for segment in path[1:].split("/"):
            for tail, group in node.tails:
                if segment.startswith(tail):
                    found.append(group)
            child = node.children.get(segment)
            if child is None:
                break
            node = child
        return found

    def all_groups(self) -> list[tuple[CompiledRule, ...]]:
        below = [g for child in self.children.values() for g in child.all_groups()]
        return [g for _, g in self.tails] + below


_NO_PREFIXES = PrefixNode(children={}, tails=())


@dataclass(frozen=True, slots=True)
class StageIndex:
    """Rules of one stage, bucketed by a literal value their top-level conjunction requires.

    - by_exact: request.path exact literals;
    - prefixes: request.path prefixes (also the literal start of path regexes and globs), in a trie;
    - by_value: (attribute, its getter, {value: rules}) for `exact`/`in` matchers on any other attribute;
    - always: rules with no usable literal.
    A request gathers only the groups its values select, then runs those rules in evaluation order.
    """

    always: tuple[CompiledRule, ...]
    by_exact: Mapping[str, tuple[CompiledRule, ...]]
    prefixes: PrefixNode
    by_value: tuple[tuple[str, attributes.Getter, Mapping[str, tuple[CompiledRule, ...]]], ...]
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
        if path.startswith("/") and self.prefixes is not _NO_PREFIXES:
            found += self.prefixes.groups(path)
        for _, get, table in self.by_value:
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

    def all_rules(self) -> list[CompiledRule]:
        """Every rule of the stage in evaluation order (the reference a linear scan would use)."""
        groups = [self.always, *self.by_exact.values(), *self.prefixes.all_groups()]
        groups += [g for _, _, table in self.by_value for g in table.values()]
        unique = {r.ordinal: r for group in groups for r in group}
        return [unique[k] for k in sorted(unique)]


def _prefix_trie(prefixes: Mapping[str, Sequence[CompiledRule]]) -> PrefixNode:
    if not prefixes:
        return _NO_PREFIXES
    tree: dict[str, Any] = {}  # segment -> subtree; "" key of a subtree: its (tail, rules) list
    for prefix, group in prefixes.items():
        *segments, tail = prefix[1:].split("/")
        node = tree
        for segment in segments:
            node = node.setdefault("/" + segment, {})  # "/" keeps segments apart from the tails key
        node.setdefault("", []).append((tail, tuple(group)))

    def freeze(node: dict[str, Any]) -> PrefixNode:
        return PrefixNode(
            children={k[1:]: freeze(v) for k, v in node.items() if k},
            tails=tuple(node.get("", ())),
        )

    return freeze(tree)


_REGEX_META = frozenset("\\.^$|?*+()[]{}")
IndexKey = tuple[str, str, tuple[str, ...]]  # (kind, attribute, literals)


def literal_prefix(pattern: str, *, glob: bool) -> str:
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


_REPEAT = re.compile(r"\{[0-9]+(,[0-9]*)?\}")


def required_literals(pattern: str) -> tuple[str, ...]:
    """Literal runs every match of an RE2 pattern contains (RE2's prefilter idea): a value missing
    one cannot match, and the engine is not called. Only top-level literals outside groups, classes
    and optional repeats count; on any syntax this does not follow (flags, \\Q, POSIX classes,
    top-level alternation) the answer is (), which only means the engine always runs."""
    if "(?" in pattern.replace("(?:", "").replace("(?P<", ""):
        return ()  # inline flags change what the rest means
    runs: list[str] = []
    run: list[str] = []
    depth = 0
    last_literal = False  # the atom just read is the last char of `run`

    def close() -> None:
        if run:
            runs.append("".join(run))
            run.clear()

    i, size = 0, len(pattern)
    while i < size:
        ch = pattern[i]
        i += 1
        literal = ""
        if ch == "\\":
            if i >= size or pattern[i] == "Q":
                return ()
            escaped = pattern[i]
            i += 1
            if escaped.isascii() and not escaped.isalnum():
                literal = escaped  # escaped punctuation
            elif escaped in "xpP" and pattern.startswith("{", i):
                end = pattern.find("}", i)
                if end < 0:
                    return ()
                i = end + 1
            else:  # \d, \x41, \101, \pL...: what follows may belong to the escape; take none of it
                while i < size and pattern[i].isalnum():
                    i += 1
        elif ch == "[":
            end = i + (pattern.startswith("^", i))
            if pattern.startswith("]", end):
                return ()
            while end < size and pattern[end] != "]":
                if pattern[end] == "[":
                    return ()
                end += 2 if pattern[end] == "\\" else 1
            if end >= size:
                return ()
            i = end + 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return ()
        elif ch == "|":
            if depth == 0:
                return ()
        elif ch in "?*{":
            if last_literal:
                run.pop()  # the char before may be absent
            if ch == "{":
                repeat = _REPEAT.match(pattern, i - 1)
                if repeat is not None:
                    i = repeat.end()
        elif ch not in "+.^$":
            literal = ch
        if literal and depth == 0:
            run.append(literal)
            last_literal = True
        else:  # anything else ends a run ("+" keeps the char before it: it occurs at least once)
            close()
            last_literal = False
    if depth != 0:
        return ()
    close()
    return tuple(runs)


def index_key(match: dict[str, Any], lists: Mapping[str, ListDoc]) -> IndexKey | None:
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
            prefix = literal_prefix(value, glob=op == "glob")
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


def build_index(rules: Sequence[tuple[CompiledRule, IndexKey | None]], *, jwt_header: str) -> StageIndex:
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
    return StageIndex(
        always=tuple(always),
        by_exact={k: tuple(v) for k, v in exact.items()},
        prefixes=_prefix_trie(prefixes),
        by_value=tuple(
            (
                attribute,
                attributes.getter(attribute, jwt_header=jwt_header),
                {k: tuple(v) for k, v in table.items()},
            )
            for attribute, table in values.items()
        ),
        size=len(rules),
    )
