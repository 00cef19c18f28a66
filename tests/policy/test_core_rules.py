"""Rule documents, compilation and matching: pure, no fixtures."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.core import documents, indexing, matching, rules
from policy.structs import CheckInput, PolicyError


def compile_doc(data: dict[str, Any], **kwargs: Any) -> rules.Snapshot:
    return rules.compile_snapshot(documents.parse_document(data), revision=1, **kwargs)


def decide(snapshot: rules.Snapshot, **attrs: Any) -> matching.Evaluation:
    return matching.evaluate(snapshot, CheckInput(**attrs))


def rule(rule_id: str, action: str, match: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "action": action, "match": match, **extra}


@pytest.mark.parametrize(
    ("matcher", "value", "expected"),
    [
        ({"exact": "/a"}, "/a", True),
        ({"exact": "/a"}, "/A", False),
        ({"exact": "/a", "ignore_case": True}, "/A", True),
        ({"prefix": "/api/"}, "/api/x", True),
        ({"prefix": "/api/"}, "/apix", False),
        ({"suffix": ".php"}, "/x/index.php", True),
        ({"glob": "/api/*/items"}, "/api/v1/items", True),
        ({"glob": "/api/*/items"}, "/api/v1/v2/items", False),
        ({"glob": "/api/**"}, "/api/v1/v2/items", True),
        ({"glob": "/file?.txt"}, "/file1.txt", True),
        ({"regex": "/users/[0-9]+"}, "/users/42", True),
        ({"regex": "/users/[0-9]+"}, "/users/42/x", False),
        ({"in": ["/a", "/b"]}, "/b", True),
        ({"in": ["/a", "/b"]}, "/c", False),
    ],
)
def test_string_matchers_on_path(matcher: dict[str, Any], value: str, expected: bool) -> None:
    snap = compile_doc({"rules": [rule("r", "deny", {"request.path": matcher})]})
    assert (decide(snap, path=value + "?q=1").decision.rule_id == "r") is expected


def test_path_excludes_query_but_url_and_query_params_see_it() -> None:
    snap = compile_doc(
        {
            "rules": [
                rule("by-query", "deny", {"request.query.debug": {"exact": "1"}}),
                rule("by-url", "deny", {"request.url": {"suffix": "?export=csv"}}),
            ]
        }
    )
    assert decide(snap, path="/x?debug=1").decision.rule_id == "by-query"
    assert decide(snap, path="/x?export=csv").decision.rule_id == "by-url"
    assert decide(snap, path="/x?debug=0").decision.rule_id == "default"


def test_headers_present_absent_and_regex() -> None:
    snap = compile_doc(
        {
            "rules": [
                rule(
                    "no-auth",
                    "deny",
                    {"request.headers.authorization": {"present": False}},
                    deny={"status": 401},
                ),
                rule("bad-token", "deny", {"request.headers.Authorization": {"regex": "Basic .*"}}),
            ]
        }
    )
    assert decide(snap, headers={}).decision.status == 401
    assert decide(snap, headers={"authorization": "Basic eA=="}).decision.rule_id == "bad-token"
    assert decide(snap, headers={"authorization": "Bearer x"}).decision.rule_id == "default"


def test_source_identity_from_spiffe_principal_and_xfcc() -> None:
    snap = compile_doc(
        {
            "rules": [
                rule(
                    "ns-sa",
                    "allow",
                    {"source.namespace": {"exact": "shop"}, "source.service_account": {"exact": "cart"}},
                )
            ]
        },
        default_decision="deny",
    )
    principal = "spiffe://cluster.local/ns/shop/sa/cart"
    assert decide(snap, source_principal=principal).decision.rule_id == "ns-sa"
    xfcc = f"By=spiffe://cluster.local/ns/x/sa/y;Hash=abc;URI={principal}"
    assert decide(snap, headers={"x-forwarded-client-cert": xfcc}).decision.rule_id == "ns-sa"
    assert decide(snap, source_principal="spiffe://cluster.local/ns/shop/sa/other").decision.kind == "deny"


def test_cidr_and_ip_lists() -> None:
    snap = compile_doc(
        {
            "lists": [
                {"name": "office", "kind": "cidr", "entries": ["10.1.0.0/16", "2001:db8::/32", "192.0.2.7"]}
            ],
            "rules": [rule("office", "deny", {"source.address": {"in_list": "office"}})],
        }
    )
    for address, hit in [("10.1.2.3", True), ("10.2.0.1", False), ("2001:db8::1", True), ("192.0.2.7", True)]:
        assert (decide(snap, source_address=address).decision.rule_id == "office") is hit
    assert decide(snap, source_address="not-an-ip").decision.rule_id == "default"


def test_jwt_claims_from_verified_payload_header() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"sub": "ann", "groups": ["dev", "ops"]}).encode()).rstrip(
        b"="
    )
    snap = compile_doc({"rules": [rule("ops", "deny", {"request.jwt.groups": {"exact": "ops"}})]})
    assert decide(snap, headers={"x-jwt-payload": payload.decode()}).decision.rule_id == "ops"
    assert decide(snap, headers={"x-jwt-payload": "%%%not-base64"}).decision.rule_id == "default"


def test_combinators_all_any_not() -> None:
    snap = compile_doc(
        {
            "rules": [
                rule(
                    "combo",
                    "deny",
                    {
                        "any": [
                            {"request.method": {"exact": "DELETE"}},
                            {"request.method": {"exact": "PUT"}},
                        ],
                        "not": {"source.namespace": {"exact": "admin"}},
                    },
                )
            ]
        }
    )
    assert decide(snap, method="DELETE").decision.rule_id == "combo"
    assert decide(snap, method="GET").decision.rule_id == "default"
    assert (
        decide(snap, method="PUT", source_principal="spiffe://td/ns/admin/sa/x").decision.rule_id == "default"
    )


def test_evaluation_order_deny_then_quota_then_allow_then_default() -> None:
    snap = compile_doc(
        {
            "limits": [{"name": "l", "requests": 1, "unit": "second"}],
            "rules": [
                rule("allow-all", "allow", {}),
                rule("limit", "rate_limit", {"request.path": {"prefix": "/s"}}, limit="l"),
                rule("deny-x", "deny", {"request.path": {"prefix": "/s/x"}}),
                rule("deny-first", "deny", {"request.path": {"prefix": "/s/x"}}, priority=-1),
            ],
        },
        default_decision="deny",
    )
    assert decide(snap, path="/s/x").decision.rule_id == "deny-first"
    limited = decide(snap, path="/s/y")
    assert limited.decision.rule_id == "allow-all"
    assert [q.rule_id for q in limited.quotas] == ["limit"]
    assert not limited.cacheable
    assert decide(snap, path="/t").decision.rule_id == "allow-all"


def test_dry_run_rules_are_reported_never_enforced() -> None:
    snap = compile_doc({"rules": [rule("dry", "deny", {"request.method": {"exact": "GET"}}, dry_run=True)]})
    result = decide(snap, method="GET")
    assert result.decision.kind == "allow"
    assert result.dry_run_rules == ("dry",)


def test_default_deny_status_is_configurable() -> None:
    snap = compile_doc({}, default_decision="deny", default_deny_status=401)
    assert decide(snap).decision.status == 401


def test_explain_traces_every_rule_considered() -> None:
    snap = compile_doc(
        {"rules": [rule("a", "deny", {"request.method": {"prefix": "PO"}}), rule("b", "allow", {})]}
    )
    trace = matching.evaluate(snap, CheckInput(method="GET"), explain=True).trace
    assert [(s.stage, s.rule_id, s.matched) for s in trace] == [("deny", "a", False), ("allow", "b", True)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"rules": [{"id": "r", "action": "deny", "match": {"request.pth": {"exact": "/"}}}]},
            "rule 'r': field match.request.pth: unknown attribute",
        ),
        (
            {"rules": [{"id": "r", "action": "deny", "match": {"request.path": {"regex": "(a)\\1"}}}]},
            "rule 'r': field match.request.path: invalid RE2 regex",
        ),
        (
            {"rules": [{"id": "r", "action": "deny", "match": {"request.path": {"regex": "(a"}}}]},
            "invalid RE2 regex: missing )",
        ),
        (
            {
                "rules": [
                    {"id": "r", "action": "deny", "match": {"request.path": {"exact": "/", "prefix": "/"}}}
                ]
            },
            "exactly one of",
        ),
        (
            {"rules": [{"id": "r", "action": "deny", "match": {"source.address": {"in_list": "nope"}}}]},
            "list 'nope' does not exist",
        ),
        (
            {"rules": [{"id": "r", "action": "rate_limit", "limit": "nope", "match": {}}]},
            "rule 'r': field limit: limit 'nope' does not exist",
        ),
        ({"rules": [{"id": "r", "action": "rate_limit", "match": {}}]}, "needs 'limit'"),
        ({"rules": [{"id": "r", "action": "deny", "deny": {"status": 99}}]}, "rule 'r': field deny.status"),
        (
            {"rules": [{"id": "r", "action": "allow", "allow": {"headers": {"bad header": "x"}}}]},
            "not a valid header name",
        ),
        (
            {
                "rules": [
                    {"id": "r", "action": "deny", "match": {}},
                    {"id": "r", "action": "allow", "match": {}},
                ]
            },
            "rule 'r': defined twice",
        ),
        ({"rules": [{"id": "r", "action": "deny", "extra": 1}]}, "rule 'r': field extra"),
        ({"lists": [{"name": "l", "kind": "cidr", "entries": ["10.0.0.0/33"]}]}, "list 'l': field entries"),
        ({"limits": [{"name": "l", "requests": 0, "unit": "second"}]}, "limit 'l': field requests"),
        ({"rules": [{"id": "r", "action": "deny", "match": {"all": []}}]}, "field match.all"),
    ],
)
def test_invalid_documents_name_the_item_and_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_doc(data)
    assert message in str(caught.value)


def test_path_index_returns_the_same_decisions_as_a_linear_scan() -> None:
    many = [rule(f"p{i}", "deny", {"request.path": {"prefix": f"/svc{i}/"}}) for i in range(100)]
    many += [rule(f"e{i}", "deny", {"request.path": {"exact": f"/x{i}"}}) for i in range(50)]
    many += [rule("m", "deny", {"request.method": {"exact": "TRACE"}}, priority=5)]
    many += [rule("short", "deny", {"request.path": {"prefix": "/sv"}, "request.method": {"exact": "X"}})]
    many += [rule("re", "deny", {"request.path": {"regex": "/rx/v[0-9]+"}})]
    snap = compile_doc({"rules": many})
    assert snap.deny.prefixes.children
    assert snap.deny.by_exact
    assert snap.deny.by_value
    assert decide(snap, path="/svc7/a").decision.rule_id == "p7"
    assert decide(snap, path="/x3").decision.rule_id == "e3"
    assert decide(snap, path="/x3/more").decision.rule_id == "default"
    assert decide(snap, path="/svc7/a", method="TRACE").decision.rule_id == "p7"  # priority 5 runs later
    assert decide(snap, path="/other", method="TRACE").decision.rule_id == "m"
    assert decide(snap, path="/svc", method="X").decision.rule_id == "short"
    assert decide(snap, path="/rx/v12").decision.rule_id == "re"
    assert decide(snap, path="/rx/v").decision.rule_id == "default"
    assert decide(snap, path="/svc7").decision.rule_id == "default"  # '/svc7/' needs the slash
    assert decide(snap, path="/svc7/").decision.rule_id == "p7"
    assert decide(snap, path="svc7/a").decision.rule_id == "default"  # not origin-form: no prefix applies


@pytest.mark.parametrize(
    ("pattern", "glob", "prefix"),
    [
        ("/api/v[0-9]+/x", False, "/api/v"),
        ("/api/vs?", False, "/api/v"),
        ("/a|/b", False, ""),
        ("/users/.*", False, "/users/"),
        ("/files/**/x", True, "/files/"),
        ("/f?le", True, "/f"),
    ],
)
def test_literal_prefixes_of_patterns(pattern: str, glob: bool, prefix: str) -> None:
    assert indexing.literal_prefix(pattern, glob=glob) == prefix


def test_quota_keys_are_bounded_for_giant_descriptor_values() -> None:
    snap = compile_doc(
        {
            "limits": [
                {"name": "l", "requests": 1, "unit": "second", "descriptor": ["request.headers.x-user"]}
            ],
            "rules": [rule("lim", "rate_limit", {}, limit="l")],
        }
    )
    small = decide(snap, headers={"x-user": "ann"}).quotas[0].key
    assert small == "l|ann"
    huge = decide(snap, headers={"x-user": "u" * 65_536}).quotas[0].key
    other = decide(snap, headers={"x-user": "v" * 65_536}).quotas[0].key
    assert len(huge) < 100
    assert huge != other


_PATTERNS = [
    ("/catalog/v[0-9]+/export/.*\\.csv", False),
    ("/api/(users|orders)/[^/]+", False),
    ("ÄPFEL-.*", True),
    ("x*", False),
    ("", False),
    ("[\\x{1F600}-\\x{1F64F}]+", False),
]


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(_PATTERNS), st.text(alphabet=st.characters(codec="utf-8")))
def test_regex_matchers_answer_as_re2s_own_fullmatch(case: tuple[str, bool], text: str) -> None:
    pattern, ignore_case = case
    options = re2.Options()
    options.case_sensitive = not ignore_case
    reference = re2.compile(pattern, options)
    ours, _, _ = rules._regex(pattern, ignore_case)
    # The text as it came, and inside a value shaped to match the first pattern.
    for value in (text, f"/catalog/v12/export/{text}.csv", f"äpfel-{text}"):
        assert ours(value) == (reference.fullmatch(value) is not None), value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rules": [{"id": "r\n", "action": "deny", "match": {}}]}, "rule 'r\\n': field id: ids are"),
        (
            {"rules": [{"id": "r", "action": "deny", "match": {}, "deny": {"headers": {"x-evil\n": "1"}}}]},
            "'x-evil\\n' is not a valid header name",
        ),
        (
            {"rules": [{"id": "r", "action": "allow", "match": {}, "allow": {"remove_headers": ["x-a\n"]}}]},
            "'x-a\\n' is not a valid header name",
        ),
        ({"lists": [{"name": "l\n"}]}, "field name: names are"),
        ({"limits": [{"name": "l\n", "requests": 1, "unit": "second"}]}, "field name: names are"),
    ],
)
def test_names_with_a_trailing_newline_are_refused(data: dict[str, Any], message: str) -> None:
    """Names reach response headers, metric labels and files: `$` would let a trailing newline through."""
    with pytest.raises(PolicyError) as caught:
        compile_doc(data)
    assert message in str(caught.value)
