"""Hypothesis: >= 10k generated CheckRequests against the evaluator and the gRPC servicer.

Properties: nothing raises; the path index decides exactly like a linear scan; the servicer answers
every request (even undecodable bytes) with a well-formed CheckResponse that agrees with the evaluator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.adapters.memory import MemoryQuotas
from policy.adapters.metrics import PolicyMetrics
from policy.adapters.sql import SqlPolicyStore
from policy.core import documents, matching, rules
from policy.edge import grpc_authz
from policy.service import DecisionLog, PolicyService
from policy.settings import PolicySettings
from policy.structs import CheckInput

HEADERS = [
    "x-user",
    "user-agent",
    "authorization",
    "x-debug",
    "x-jwt-payload",
    "x-forwarded-client-cert",
    "cookie",
]
DOCUMENT: dict[str, Any] = {
    "lists": [
        {"name": "nets", "kind": "cidr", "entries": ["10.0.0.0/8", "2001:db8::/32"]},
        {"name": "agents", "kind": "string", "entries": ["curl/8", "badbot"]},
    ],
    "limits": [
        {"name": "big", "requests": 10_000_000, "unit": "second", "descriptor": ["request.headers.x-user"]}
    ],
    "rules": [
        *[
            {
                "id": f"p{i}",
                "action": "deny",
                "match": {"request.path": {"prefix": f"/svc{i}"}},
                "priority": i % 3,
            }
            for i in range(20)
        ],
        {
            "id": "exact",
            "action": "deny",
            "match": {"request.path": {"exact": "/exact"}},
            "deny": {"status": 451},
        },
        {"id": "nets", "action": "deny", "match": {"source.address": {"in_list": "nets"}}},
        {"id": "agents", "action": "deny", "match": {"request.headers.user-agent": {"in_list": "agents"}}},
        {
            "id": "re",
            "action": "deny",
            "match": {"request.path": {"regex": "/users/[0-9]+(/.*)?"}},
            "dry_run": True,
        },
        {
            "id": "combo",
            "action": "deny",
            "match": {
                "any": [{"source.namespace": {"exact": "evil"}}, {"request.jwt.role": {"exact": "banned"}}]
            },
        },
        {"id": "lim", "action": "rate_limit", "limit": "big", "match": {"request.path": {"prefix": "/api"}}},
        {
            "id": "glob",
            "action": "allow",
            "match": {"request.path": {"glob": "/api/**"}},
            "allow": {"headers": {"x-a": "1"}},
        },
        {
            "id": "m",
            "action": "deny",
            "match": {"request.method": {"in": ["DELETE", "get"]}},
            "dry_run": True,
        },
        {
            "id": "u",
            "action": "deny",
            "match": {"request.headers.x-user": {"exact": "badbot"}, "request.method": {"exact": "POST"}},
        },
        {"id": "g2", "action": "allow", "match": {"request.path": {"glob": "/svc1?/**"}}},
        {"id": "auth", "action": "allow", "match": {"request.headers.authorization": {"prefix": "Bearer "}}},
        {"id": "q", "action": "allow", "match": {"request.query.token": {"present": True}}},
    ],
}

paths = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda head, tail, query: head + tail + query,
        st.sampled_from(["/", "/svc1", "/svc13/x", "/exact", "/users/42", "/api/v1/", "/admin", ""]),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
        st.sampled_from(["", "?token=1", "?a=b&token", "?%zz", "?" + "x" * 200]),
    ),
    st.just("/" + "a" * 20_000),
)
header_values = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        ["curl/8", "badbot", "Bearer abc", "eyJyb2xlIjoiYmFubmVkIn0", "URI=spiffe://td/ns/evil/sa/x"]
    ),
    st.just("v" * 65_536),
)
addresses = st.one_of(st.ip_addresses().map(str), st.text(max_size=20), st.just(""))
principals = st.one_of(
    st.just(""),
    st.builds(
        lambda ns, sa: f"spiffe://cluster.local/ns/{ns}/sa/{sa}",
        st.sampled_from(["evil", "ok", ""]),
        st.text(max_size=8),
    ),
    st.text(max_size=40),
)
check_inputs = st.builds(
    CheckInput,
    method=st.sampled_from(["", "GET", "POST", "DELETE", "get", "\x00"]),
    path=paths,
    host=st.text(max_size=30),
    headers=st.dictionaries(
        st.one_of(st.sampled_from(HEADERS), st.text(max_size=12)), header_values, max_size=10
    ),
    source_address=addresses,
    source_principal=principals,
    destination_port=st.integers(0, 65535),
)


def _snapshot() -> rules.Snapshot:
    return rules.compile_snapshot(documents.parse_document(DOCUMENT), revision=1)


def _linear(snapshot: rules.Snapshot, req: CheckInput) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The reference: every rule of each stage in order, no index."""

    def stage(index: rules.StageIndex) -> list[rules.CompiledRule]:
        return index.all_rules()

    dry: list[str] = []
    for rule in stage(snapshot.deny):
        if rule.predicate(req):
            if rule.dry_run:
                dry.append(rule.rule_id)
                continue
            return rule.rule_id, (), tuple(dry)
    quotas = []
    for rule in stage(snapshot.rate_limit):
        if rule.predicate(req):
            if rule.dry_run:
                dry.append(rule.rule_id)
            else:
                quotas.append(rule.rule_id)
    decided = "default"
    for rule in stage(snapshot.allow):
        if rule.predicate(req):
            if rule.dry_run:
                dry.append(rule.rule_id)
                continue
            decided = rule.rule_id
            break
    return decided, tuple(quotas), tuple(dry)


SNAPSHOT = _snapshot()
FUZZ = settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def servicer(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[grpc_authz.AuthorizationHandler, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    metrics = PolicyMetrics(None)
    db = Path(tmp_path_factory.mktemp("fuzz")) / "p.db"
    service = PolicyService(
        settings=PolicySettings(cache_size=1000),
        store=SqlPolicyStore(f"sqlite:///{db}"),
        quota_backend=MemoryQuotas(),
        metrics=metrics,
        decisions=DecisionLog(None, sample=1.0, capacity=100, metrics=metrics),
    )
    service._swap(SNAPSHOT)
    yield grpc_authz.AuthorizationHandler(service), loop
    loop.close()


def _request(req: CheckInput) -> Any:
    msg = external_auth_pb2.CheckRequest()
    attrs = msg.attributes
    http = attrs.request.http
    http.method, http.path, http.host = req.method, req.path, req.host
    for key, value in req.headers.items():
        http.headers[key] = value
    attrs.source.address.socket_address.address = req.source_address
    attrs.source.principal = req.source_principal
    attrs.destination.address.socket_address.port_value = req.destination_port
    return msg


@pytest.mark.parametrize("part", [1, 2, 3, 4])
@FUZZ
@given(req=check_inputs)
def test_evaluator_and_servicer_on_generated_requests(
    part: int, req: CheckInput, servicer: tuple[grpc_authz.AuthorizationHandler, asyncio.AbstractEventLoop]
) -> None:
    """4 x 2,500 generated CheckRequests, each through the evaluator and through the servicer."""
    result = matching.evaluate(SNAPSHOT, req)
    fresh = CheckInput(**{f: getattr(req, f) for f in CheckInput.__dataclass_fields__ if f != "memo"})
    expected_ids = (result.decision.rule_id, tuple(q.rule_id for q in result.quotas), result.dry_run_rules)
    assert expected_ids == _linear(SNAPSHOT, fresh)

    handler, loop = servicer
    wire = loop.run_until_complete(handler.check(_request(req).SerializeToString(), None))
    response = external_auth_pb2.CheckResponse.FromString(wire)
    expected = result.decision
    assert response.dynamic_metadata["rule"] == expected.rule_id
    if expected.allowed:
        assert response.status.code == 0
        assert response.HasField("ok_response")
    else:
        assert response.status.code == 7
        assert response.denied_response.status.code == expected.status


# Requests Envoy could send are the 10,000 above, each answer checked against the evaluator.
@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=300))
def test_servicer_survives_arbitrary_bytes(
    data: bytes, servicer: tuple[grpc_authz.AuthorizationHandler, asyncio.AbstractEventLoop]
) -> None:
    handler, loop = servicer
    wire = loop.run_until_complete(handler.check(data, None))
    response = external_auth_pb2.CheckResponse.FromString(wire)
    assert response.status.code in (0, 7)
