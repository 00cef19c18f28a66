"""A Check is one call (policy/core/checks.py): the service asks the request it is handed for no more
than the decision needs. A cache hit reads the key only, never the attributes; the decision record's
fields are read for a record the log takes, and not at all for a decision it does not sample."""

from __future__ import annotations

import time
from collections.abc import Hashable

import orjson
import pytest
from envoy.service.auth.v3 import external_auth_pb2

from policy.core.checks import RecordFields, record_fields
from policy.core.rules import Snapshot
from policy.edge import grpc_authz
from policy.structs import CheckInput, Decision
from tests.policy.conftest import PolicyFactory

POLICY = {"rules": [{"id": "deny-admin", "action": "deny", "match": {"request.path": {"prefix": "/admin"}}}]}


class CountingCheck:
    """A CheckRequest over a built input that counts what the service asked of it."""

    def __init__(self, req: CheckInput | None, *, key: Hashable | None = None) -> None:
        self.req = req
        self.key = key
        self.started = time.perf_counter()
        self.asked: list[str] = []

    def cache_key(self, snapshot: Snapshot) -> Hashable | None:
        self.asked.append("cache_key")
        if self.key is not None or self.req is None:
            return self.key
        return snapshot.cache_key(self.req)

    def attributes(self) -> CheckInput | None:
        self.asked.append("attributes")
        return self.req

    def record_fields(self) -> RecordFields:
        self.asked.append("record_fields")
        return record_fields(self.req or CheckInput())


def _decided(answer: object) -> Decision:
    assert isinstance(answer, Decision)  # no quota in these policies: decided without awaiting
    return answer


async def test_a_cache_hit_reads_the_key_and_no_attributes(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=POLICY, decision_log_flush_interval=60)
    service = run.part.service
    first = CountingCheck(CheckInput(method="GET", path="/admin/1", request_id="a"))
    assert _decided(service.check(first)).rule_id == "deny-admin"
    assert first.asked == ["cache_key", "attributes", "record_fields"]
    again = CountingCheck(CheckInput(method="GET", path="/admin/1", request_id="b"))
    assert _decided(service.check(again)).rule_id == "deny-admin"
    assert again.asked == ["cache_key", "record_fields"]
    assert service.decisions.flush() == 2
    records = {key: orjson.loads(value) for key, value in run.sinks.sink("decisions").records}
    assert (records[b"a"]["cached"], records[b"b"]["cached"]) == (False, True)


async def test_without_a_key_off_the_request_the_service_keys_on_its_attributes(
    policy_factory: PolicyFactory,
) -> None:
    """What the gRPC edge's request answers when the compiled reader cannot vouch for the bytes."""

    class Keyless(CountingCheck):
        def cache_key(self, snapshot: Snapshot) -> Hashable | None:
            self.asked.append("cache_key")
            return None

    run = await policy_factory(policy=POLICY)
    service = run.part.service
    for _ in range(2):
        assert _decided(service.check(Keyless(CheckInput(path="/admin")))).rule_id == "deny-admin"
    assert run.metric("remixer_policy_cache_misses_total") == 1
    assert run.metric("remixer_policy_cache_hits_total") == 1


async def test_unsampled_decisions_never_read_their_record_fields(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=POLICY, decision_log_sample=0.0)
    request = CountingCheck(CheckInput(path="/admin"))
    assert _decided(run.part.service.check(request)).rule_id == "deny-admin"
    assert run.part.service.decisions.flush() == 0
    assert "record_fields" not in request.asked


async def test_a_request_that_does_not_decode_gets_the_undecodable_answer(
    policy_factory: PolicyFactory,
) -> None:
    run = await policy_factory(policy=POLICY, undecodable_decision="deny", decision_log_flush_interval=60)
    request = CountingCheck(None)
    decision = _decided(run.part.service.check(request))
    assert (decision.kind, decision.rule_id) == ("deny", "undecodable")
    assert run.metric("remixer_policy_odd_inputs_total", kind="undecodable") == 1
    assert run.part.service.decisions.flush() == 1
    assert request.asked == ["cache_key", "attributes", "record_fields"]


async def test_a_failing_request_gets_the_default_and_is_counted(policy_factory: PolicyFactory) -> None:
    """Whatever goes wrong inside a Check is the service's to answer: the edge never sees an error."""

    class Broken(CountingCheck):
        def attributes(self) -> CheckInput | None:
            raise RuntimeError("reader bug")

    run = await policy_factory(policy=POLICY, default_decision="deny", default_deny_status=451)
    decision = _decided(run.part.service.check(Broken(CheckInput(path="/x"), key=b"k")))
    assert (decision.status, decision.rule_id) == (451, "default")
    assert run.metric("remixer_policy_odd_inputs_total", kind="check_error") == 1


@pytest.mark.parametrize("compiled", [True, False], ids=["wire-reader", "upb-only"])
async def test_a_long_path_is_counted_and_decided(
    policy_factory: PolicyFactory, monkeypatch: pytest.MonkeyPatch, compiled: bool
) -> None:
    if not compiled:
        for name in ("KeyReader", "read_input", "log_fields"):
            monkeypatch.setattr(grpc_authz, name, None)
    run = await policy_factory(policy=POLICY)
    msg = external_auth_pb2.CheckRequest()
    msg.attributes.request.http.method = "GET"
    msg.attributes.request.http.path = "/admin/" + "p" * (16 * 1024)
    answer = external_auth_pb2.CheckResponse.FromString(
        await run.part.grpc.check(msg.SerializeToString(), None)
    )
    assert answer.dynamic_metadata["rule"] == "deny-admin"
    assert run.metric("remixer_policy_odd_inputs_total", kind="long_path") == 1
