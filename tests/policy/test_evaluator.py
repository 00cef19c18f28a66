"""The compiled evaluator (remixer/kit/native/evaluator.pyx) against the Python one, and the regex prefilter
against RE2.

Generated policies (every matcher kind, all/any/not, dry-run rules, quotas, priorities) and generated
requests go through both evaluators; they must pick the same rule, the same quota keys and the same
dry-run matches. The literals a pattern is said to need must be in every text RE2 matches.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import re2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from policy.core import attributes, documents, indexing, matching, rules
from policy.structs import CheckInput, PolicyError
from remixer.kit.native.evaluator import Program  # built by `pip install -e .` (make test)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

# ---- generated policies ---------------------------------------------------------------------------

SEGMENTS = ["api", "v1", "users", "42", "admin", "x.csv", ""]
paths = st.lists(st.sampled_from(SEGMENTS), max_size=4).map(lambda parts: "/" + "/".join(parts))
words = st.sampled_from(["ann", "bob", "Ann", "", "curl/8", "GET", "POST", "/api", "/api/v1/users"])
addresses = st.one_of(
    st.sampled_from(
        [
            "10.1.2.3",
            "10.1.2.255",
            "192.168.0.1",
            "010.1.2.3",
            "[10.1.2.3]",
            "10.1.2",
            "10.1.2.3.4",
            "10.1.2.256",
            " 10.1.2.3",
            "2001:db8::1",
            "::ffff:10.1.2.3",
            "",
            "1.2.3.4",
        ]
    ),
    st.ip_addresses(v=4).map(str),
)
networks = st.lists(
    st.sampled_from(
        ["10.0.0.0/8", "10.1.2.0/24", "10.1.2.3", "192.168.0.0/16", "2001:db8::/32", "0.0.0.0/0"]
    ),
    min_size=1,
    max_size=3,
    unique=True,
)
patterns = st.sampled_from(
    ["/api/v[0-9]+/.*", "/api/(users|admin)(/.*)?", ".*\\.csv", "/users/[0-9]+", "/a.i/.*", "(/api)?/v1.*"]
)
ATTRIBUTES = [
    "request.path",
    "request.method",
    "request.url",
    "request.headers.x-user",
    "request.query.token",
    "request.jwt.role",
    "source.address",
    "source.namespace",
    "destination.port",
    "destination.host",
]


def matchers(attribute: str) -> st.SearchStrategy[dict[str, Any]]:
    strings = st.one_of(
        st.builds(lambda v: {"exact": v}, words),
        st.builds(lambda v: {"prefix": v}, words),
        st.builds(lambda v: {"suffix": v}, words),
        st.builds(lambda v: {"in": v}, st.lists(words, min_size=1, max_size=3)),
        st.builds(lambda v: {"regex": v}, patterns),
        st.builds(lambda v: {"glob": v}, st.sampled_from(["/api/*", "/api/**", "*.csv", "/u?ers/*"])),
        st.just({"in_list": "names"}),
        st.just({"present": True}),
        st.just({"present": False}),
    )
    folded = strings.flatmap(
        lambda m: st.sampled_from([m, {**m, "ignore_case": True}]) if "present" not in m else st.just(m)
    )
    if attribute == "source.address":
        return st.one_of(
            st.builds(lambda v: {"cidr": v}, networks),
            st.just({"in_list": "nets"}),
            st.just({"present": True}),
        )
    if attribute == "request.path":
        return st.one_of(folded, st.builds(lambda v: {"prefix": v}, paths))
    return folded


# Built once: a strategy made inside a draw (as flatmap's function would make it) is validated at every
# draw, which cost three quarters of the generated-policy test's time.
LEAVES = {a: matchers(a).map(lambda m, a=a: {a: m}) for a in ATTRIBUTES}


def leaf() -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(ATTRIBUTES).flatmap(LEAVES.__getitem__)


matches = st.recursive(
    st.lists(leaf(), max_size=2).map(lambda items: {k: v for item in items for k, v in item.items()}),
    lambda inner: st.one_of(
        st.builds(lambda parts: {"all": parts}, st.lists(inner, min_size=1, max_size=2)),
        st.builds(lambda parts: {"any": parts}, st.lists(inner, min_size=1, max_size=2)),
        st.builds(lambda part, extra: {"not": part, **extra}, inner, leaf()),
    ),
    max_leaves=4,
)


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    rules_out = []
    for i in range(draw(st.integers(1, 12))):
        action = draw(st.sampled_from(["deny", "allow", "rate_limit"]))
        item: dict[str, Any] = {
            "id": f"r{i}",
            "action": action,
            "match": draw(matches),
            "dry_run": draw(st.booleans()),
            "priority": draw(st.integers(0, 2)),
        }
        if action == "rate_limit":
            item["limit"] = "per-user"
        rules_out.append(item)
    return {
        "lists": [
            {"name": "names", "kind": "string", "entries": ["ann", "curl/8", "/api"]},
            {"name": "nets", "kind": "cidr", "entries": draw(networks)},
        ],
        "limits": [
            {"name": "per-user", "requests": 10, "unit": "second", "descriptor": ["request.headers.x-user"]}
        ],
        "rules": rules_out,
    }


requests = st.builds(
    CheckInput,
    method=st.sampled_from(["GET", "POST", "", "get"]),
    path=st.builds(lambda p, q: p + q, paths, st.sampled_from(["", "?token=1", "?a=b"])),
    host=st.sampled_from(["ann", "api.local:8080", "[::1]:80", ""]),
    headers=st.dictionaries(
        st.sampled_from(["x-user", "x-jwt-payload", "x-forwarded-client-cert"]),
        st.one_of(words, st.just('{"role": ["ann", "bob"]}'), st.just("URI=spiffe://td/ns/ann/sa/x")),
        max_size=3,
    ),
    source_address=addresses,
    source_principal=st.sampled_from(["", "spiffe://td/ns/ann/sa/web", "spiffe://td/ns/bob/sa/web"]),
    destination_port=st.sampled_from([0, 42, 8080]),
)


def _copy(req: CheckInput) -> CheckInput:
    return dataclasses.replace(req, memo={})


def _outcome(evaluation: matching.Evaluation) -> tuple[Any, ...]:
    return (evaluation.decision, tuple(q.key for q in evaluation.quotas), evaluation.dry_run_rules)


@pytest.mark.parametrize("attribute", sorted(attributes.PLAIN_FIELDS))
def test_plain_fields_are_read_as_the_python_getters_read_them(attribute: str) -> None:
    """The compiled evaluator reads these attributes from their CheckInput field (empty -> absent)."""
    field = attributes.PLAIN_FIELDS[attribute]
    policy = {
        "rules": [
            {"id": "is-v", "action": "deny", "match": {attribute: {"exact": "v"}}},
            {"id": "absent", "action": "deny", "match": {attribute: {"present": False}}},
        ]
    }
    snapshot = rules.compile_snapshot(documents.parse_document(policy), revision=1)
    for value, decided in (("v", "is-v"), ("", "absent"), ("w", "default")):
        req = CheckInput(**{field: value})
        assert matching.evaluate(snapshot, _copy(req)).decision.rule_id == decided
        assert matching.evaluate(dataclasses.replace(snapshot, program=None), req).decision.rule_id == decided


def test_snapshots_carry_the_compiled_program() -> None:
    snapshot = rules.compile_snapshot(documents.parse_document({"rules": []}), revision=1)
    assert isinstance(snapshot.program, Program)


@FUZZ
@given(policy=policies(), batch=st.lists(requests, min_size=1, max_size=8))
def test_compiled_evaluator_decides_as_the_python_one(
    policy: dict[str, Any], batch: list[CheckInput]
) -> None:
    try:
        snapshot = rules.compile_snapshot(documents.parse_document(policy), revision=1)
    except PolicyError:
        assume(False)  # a generated list of networks can be refused (no valid entries); not the subject
    reference = dataclasses.replace(snapshot, program=None)
    for req in batch:
        assert _outcome(matching.evaluate(snapshot, _copy(req))) == _outcome(
            matching.evaluate(reference, _copy(req))
        ), req


@pytest.mark.parametrize(
    ("address", "matched"),
    [
        ("10.1.2.3", True),
        ("10.1.2.255", True),
        ("10.1.3.0", False),
        ("[10.1.2.3]", True),  # brackets: the Python test strips them
        ("010.1.2.3", False),  # leading zeros: ipaddress refuses them
        ("10.1.2.256", False),
        ("10.1.2", False),
        ("1.2.3.4.5", False),
        ("::ffff:10.1.2.3", False),  # an IPv6 address, not in a v4 network
        ("", False),
    ],
)
def test_ipv4_text_is_read_as_ipaddress_reads_it(address: str, matched: bool) -> None:
    policy = {
        "rules": [{"id": "nets", "action": "deny", "match": {"source.address": {"cidr": ["10.1.2.0/24"]}}}]
    }
    snapshot = rules.compile_snapshot(documents.parse_document(policy), revision=1)
    for evaluated in (snapshot, dataclasses.replace(snapshot, program=None)):
        decision = matching.evaluate(evaluated, CheckInput(source_address=address)).decision
        assert (decision.rule_id == "nets") is matched


def test_index_groups_merge_in_rule_order_and_run_each_rule_once() -> None:
    """A rule reached through an always-group, a prefix and two claim values runs once, in order."""
    policy = {
        "rules": [
            {
                "id": "first",
                "action": "deny",
                "match": {"request.jwt.role": {"in": ["a", "b"]}},
                "dry_run": True,
            },
            {
                "id": "second",
                "action": "deny",
                "match": {"request.path": {"prefix": "/api/"}},
                "dry_run": True,
            },
            {
                "id": "third",
                "action": "deny",
                "match": {"request.headers.x-user": {"regex": "a.*"}},
                "dry_run": True,
            },
            {"id": "fourth", "action": "deny", "match": {"request.path": {"prefix": "/api/v1/"}}},
        ]
    }
    snapshot = rules.compile_snapshot(documents.parse_document(policy), revision=1)
    req = CheckInput(path="/api/v1/x", headers={"x-user": "ann", "x-jwt-payload": '{"role": ["a", "b"]}'})
    evaluation = matching.evaluate(snapshot, req)
    assert evaluation.decision.rule_id == "fourth"
    assert evaluation.dry_run_rules == ("first", "second", "third")


def test_more_index_groups_than_the_merge_holds_still_run_in_order() -> None:
    """70 prefixes of one path segment: 70 groups, past the merge's fixed 64 (its sorted fallback)."""
    policy = {
        "rules": [
            {
                "id": f"p{k}",
                "action": "deny",
                "match": {"request.path": {"prefix": "/" + "a" * k}},
                "dry_run": True,
            }
            for k in range(70, 0, -1)
        ]
    }
    snapshot = rules.compile_snapshot(documents.parse_document(policy), revision=1)
    req = CheckInput(path="/" + "a" * 80)
    evaluation = matching.evaluate(snapshot, _copy(req))
    assert evaluation.dry_run_rules == tuple(f"p{k}" for k in range(70, 0, -1))
    assert _outcome(evaluation) == _outcome(
        matching.evaluate(dataclasses.replace(snapshot, program=None), req)
    )


# ---- the regex prefilter ----------------------------------------------------------------------------

ALPHABET = "ab/.-"
# (pattern, the texts one instance of it matches)
ATOMS = [(re.escape(c), c) for c in ALPHABET] + [
    ("[ab]", "ab"),
    ("[^/]", "ab.-"),
    (".", ALPHABET),
    ("\\d", "0123456789"),
    ("[a-c]", "abc"),
    ("\\x41", "A"),
    ("\\101", "A"),  # octal
    ("\\pL", "ab"),
]
REPEATS = {"": (1, 1), "?": (0, 1), "*": (0, 2), "+": (1, 2), "{2}": (2, 2), "{1,2}": (1, 2), "*?": (0, 2)}


@st.composite
def pattern_and_match(draw: st.DrawFn, depth: int = 0) -> tuple[str, str]:
    """A pattern and a text it fully matches, built together (cheaper and surer than from_regex)."""
    kind = draw(st.sampled_from(["atom", "atom", "sequence", "group"] if depth < 3 else ["atom"]))
    if kind == "atom":
        pattern, chars = draw(st.sampled_from(ATOMS))
        repeat = draw(st.sampled_from(sorted(REPEATS)))
        low, high = REPEATS[repeat]
        count = draw(st.integers(low, high))
        return pattern + repeat, "".join(draw(st.sampled_from(chars)) for _ in range(count))
    if kind == "sequence":
        parts = draw(st.lists(pattern_and_match(depth + 1), min_size=1, max_size=4))
        return "".join(p for p, _ in parts), "".join(t for _, t in parts)
    branches = draw(st.lists(pattern_and_match(depth + 1), min_size=1, max_size=3))
    chosen = draw(st.sampled_from(branches))[1]
    repeat = draw(st.sampled_from(["", "?", "*", "+"]))
    low, high = REPEATS[repeat]
    count = draw(st.integers(low, high))
    return "(" + "|".join(p for p, _ in branches) + ")" + repeat, chosen * count


@st.composite
def generated(draw: st.DrawFn) -> tuple[str, str]:
    if draw(st.booleans()):
        return draw(pattern_and_match())
    branches = draw(st.lists(pattern_and_match(1), min_size=2, max_size=3))
    return "|".join(p for p, _ in branches), draw(st.sampled_from(branches))[1]


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=generated(), other=st.text(alphabet=ALPHABET + "xyz0", max_size=12))
def test_required_literals_are_in_every_match(case: tuple[str, str], other: str) -> None:
    pattern, matching_text = case
    reference = re2.compile(pattern)
    assert reference.fullmatch(matching_text) is not None  # the generator's own claim
    needed = indexing.required_literals(pattern)
    assert all(literal in matching_text for literal in needed), (needed, matching_text)
    test, _, _ = rules._regex(pattern, False)
    for text in (matching_text, other):
        assert test(text) is (reference.fullmatch(text) is not None)


@pytest.mark.parametrize(
    ("pattern", "needed"),
    [
        ("/catalog/v[0-9]+/export/.*\\.csv", ("/catalog/v", "/export/", ".csv")),
        ("ab?c", ("a", "c")),
        ("a+b", ("a", "b")),
        ("x{2,3}yz", ("yz",)),
        ("(x|y)abc", ("abc",)),
        ("a|b", ()),  # top-level alternation: nothing is needed by every branch
        ("(?i)abc", ()),  # flags change the meaning of what follows
        ("\\Qa.b\\E", ()),
        ("[]a]b", ()),
        ("[[:alpha:]]x", ()),
        ("ab\\x41cd", ("ab",)),  # the digits after \x belong to it: nothing after is taken
        ("ab\\101", ("ab",)),
    ],
)
def test_required_literals_of_known_patterns(pattern: str, needed: tuple[str, ...]) -> None:
    assert indexing.required_literals(pattern) == needed
