"""The runtime: decision cache, quota fallbacks, reloads, store outages, files, decision logs."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import grpc
import orjson
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry

from policy.core import documents, rules
from policy.edge import grpc_authz
from policy.service import PolicyService
from policy.structs import CheckInput, PolicyError
from remixer.kit.envoy import free_port
from remixer.kit.shipping import build_record_sinks
from remixer.kit.shipping.settings import KafkaSettings, ShippingSettings
from tests.policy.conftest import PolicyFactory, eventually, write_policy
from tests.policy.deciding import decide

LIMITED = {
    "limits": [{"name": "two", "requests": 2, "unit": "minute"}],
    "rules": [
        {"id": "deny-admin", "action": "deny", "match": {"request.path": {"prefix": "/admin"}}},
        {
            "id": "lim",
            "action": "rate_limit",
            "limit": "two",
            "match": {"request.path": {"prefix": "/limited"}},
        },
        {"id": "dry", "action": "allow", "dry_run": True, "match": {"request.method": {"exact": "GET"}}},
    ],
}


async def test_cache_hits_are_counted_and_carry_dry_run_counts(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=LIMITED)
    service = run.part.service
    for _ in range(5):
        decision = await decide(service, CheckInput(method="GET", path="/admin/x"))
        assert decision.rule_id == "deny-admin"
    assert run.metric("remixer_policy_cache_misses_total") == 1
    assert run.metric("remixer_policy_cache_hits_total") == 4
    assert run.metric("remixer_policy_checks_total", decision="deny", rule="deny-admin") == 5
    # Attributes no rule reads are not in the key: a different x-request-id still hits.
    await decide(service, CheckInput(method="GET", path="/admin/x", request_id="other"))
    assert run.metric("remixer_policy_cache_hits_total") == 5
    await decide(service, CheckInput(method="GET", path="/x"))
    await decide(service, CheckInput(method="GET", path="/x"))
    assert run.metric("remixer_policy_dry_run_matches_total", rule="dry") == 2


async def test_quota_decisions_are_never_cached(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=LIMITED)
    kinds = [(await decide(run.part.service, CheckInput(path="/limited"))).kind for _ in range(4)]
    assert kinds == ["allow", "allow", "rate_limited", "rate_limited"]
    assert run.metric("remixer_policy_cache_hits_total") == 0
    assert run.metric("remixer_policy_quota_rejections_total", limit="two", shadow="false") == 2


async def test_cache_never_serves_across_a_policy_change(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=LIMITED)
    service = run.part.service
    assert (await decide(service, CheckInput(path="/open"))).kind == "allow"
    assert (await decide(service, CheckInput(path="/open"))).kind == "allow"
    response = await run.put(
        "rules", "close", {"action": "deny", "match": {"request.path": {"exact": "/open"}}}
    )
    assert response.status_code == 200
    assert (await decide(service, CheckInput(path="/open"))).rule_id == "close"


async def test_shadow_limits_count_but_admit(policy_factory: PolicyFactory) -> None:
    doc = {
        "limits": [{"name": "s", "requests": 1, "unit": "hour", "shadow": True, "algorithm": "token_bucket"}],
        "rules": [{"id": "lim", "action": "rate_limit", "limit": "s", "match": {}}],
    }
    run = await policy_factory(policy=doc)
    kinds = [(await decide(run.part.service, CheckInput(path="/"))).kind for _ in range(3)]
    assert kinds == ["allow"] * 3
    assert run.metric("remixer_policy_quota_rejections_total", limit="s", shadow="true") == 2


@pytest.mark.parametrize(
    ("fallback", "third"), [("local", "rate_limited"), ("allow", "allow"), ("deny", "rate_limited")]
)
async def test_redis_outage_applies_the_configured_fallback(
    policy_factory: PolicyFactory, fallback: str, third: str
) -> None:
    run = await policy_factory(
        policy=LIMITED,
        quota_backend="redis",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_timeout=0.1,
        quota_fallback=fallback,
    )
    kinds = [(await decide(run.part.service, CheckInput(path="/limited"))).kind for _ in range(3)]
    assert kinds[2] == third
    if fallback == "deny":
        assert kinds == ["rate_limited"] * 3
    assert run.metric("remixer_policy_redis_errors_total", fallback=fallback) == 3
    # Requests that need no quota are unaffected.
    assert (await decide(run.part.service, CheckInput(path="/free"))).kind == "allow"


async def test_store_outage_keeps_serving_the_last_snapshot(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=LIMITED)
    db = run.part.context.data_dir / "policy.db"
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE policy_revision RENAME TO policy_revision_away")
    await eventually(lambda: run.metric("remixer_policy_reload_errors_total", source="store") >= 1)
    await eventually(lambda: run.part.service.staleness() >= 0.5)
    assert (await decide(run.part.service, CheckInput(path="/admin"))).rule_id == "deny-admin"
    assert run.metric("remixer_policy_store_staleness_seconds") >= 0.5
    assert run.metric("remixer_policy_reload_errors_total", source="store") >= 1
    readiness = run.part.readiness()
    assert readiness.ready
    assert "store read" in readiness.detail
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE policy_revision_away RENAME TO policy_revision")
    await eventually(lambda: run.part.service.staleness() < 0.5, what="store recovery")


async def test_store_outage_beyond_max_staleness_reports_not_ready(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=LIMITED, max_staleness=0.3)
    with sqlite3.connect(run.part.context.data_dir / "policy.db") as conn:
        conn.execute("ALTER TABLE policy_revision RENAME TO policy_revision_away")
    await eventually(lambda: not run.part.readiness().ready, what="not ready")


async def test_invalid_policy_file_stops_the_start_with_a_clear_error(policy_factory: PolicyFactory) -> None:
    bad = {"rules": [{"id": "oops", "action": "deny", "match": {"request.path": {"regex": "(unclosed"}}}]}
    with pytest.raises(PolicyError, match=r"rule 'oops': field match.request.path: invalid RE2 regex"):
        await policy_factory(policy=bad)


async def test_policy_file_changes_apply_and_bad_edits_are_refused(
    policy_factory: PolicyFactory, tmp_path: Path
) -> None:
    path = write_policy(tmp_path, LIMITED)
    run = await policy_factory(policy_files=[path])
    service = run.part.service
    changed = {
        **LIMITED,
        "rules": [{"id": "deny-all", "action": "deny", "match": {}, "deny": {"status": 503}}],
    }
    path.write_text(yaml.safe_dump(changed))
    await eventually(lambda: service.snapshot.rule_count == 1, what="file change applied")
    assert (await decide(service, CheckInput(path="/x"))).status == 503
    revision = service.snapshot.revision
    path.write_text("rules: [{id: broken, action: nope}]\n")
    await eventually(lambda: run.metric("remixer_policy_reload_errors_total", source="file") >= 1)
    assert service.snapshot.revision == revision
    assert (await decide(service, CheckInput(path="/x"))).status == 503
    assert run.metric("remixer_policy_reload_errors_total", source="file") >= 1


async def test_decision_log_records_and_sampling(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=LIMITED)
    await decide(run.part.service, CheckInput(path="/admin", request_id="rid-1", method="GET"))
    records = run.sinks.sink("decisions").records
    await eventually(lambda: bool(records), what="decision record")
    assert records[-1][0] == b"rid-1"
    assert b'"decision":"deny"' in records[-1][1]
    quiet = await policy_factory(policy=LIMITED, decision_log_sample=0.0)
    await decide(quiet.part.service, CheckInput(path="/admin"))
    assert quiet.metric("remixer_policy_checks_total", decision="deny", rule="deny-admin") == 1
    assert quiet.part.service.decisions.flush() == 0  # what the flush task does: nothing buffered
    assert not quiet.sinks.sink("decisions").records


async def test_a_full_decision_log_buffer_drops_and_counts_the_newest(policy_factory: PolicyFactory) -> None:
    # No flush during the test (60 s): the buffer holds 100 records, the 50 beyond are dropped.
    run = await policy_factory(policy=LIMITED, decision_log_buffer=100, decision_log_flush_interval=60)
    service = run.part.service
    for i in range(150):
        await decide(service, CheckInput(path="/admin", request_id=f"r{i}"))
    assert run.metric("remixer_policy_decision_log_dropped_total") == 50
    assert run.metric("remixer_policy_checks_total", decision="deny", rule="deny-admin") == 150
    assert service.decisions.flush() == 100
    records = run.sinks.sink("decisions").records
    assert [key for key, _ in records] == [f"r{i}".encode() for i in range(100)]  # the oldest kept
    # Flushed: room again, and nothing more counted as dropped.
    await decide(service, CheckInput(path="/x", request_id="after"))
    assert service.decisions.flush() == 1
    assert records[-1][0] == b"after"
    assert run.metric("remixer_policy_decision_log_dropped_total") == 50


async def test_records_the_sink_refuses_count_as_dropped_decisions(
    policy_factory: PolicyFactory, tmp_path: Path
) -> None:
    # The real shipping hub drops records over kafka.max_record_bytes (1 KiB here): a decision record
    # with a 1.5 KB path is one of them. The policy counts what its sink did not take.
    registry = CollectorRegistry()
    shipping = ShippingSettings(kafka=KafkaSettings(max_record_bytes=1024))
    hub = build_record_sinks(shipping, data_dir=tmp_path / "hub", registry=registry)
    try:
        run = await policy_factory(policy=LIMITED, records=hub, decision_log_flush_interval=60)
        service = run.part.service
        for i in range(10):
            await decide(
                service, CheckInput(path="/x/" + "p" * (1500 if i % 3 == 0 else 10), request_id=f"r{i}")
            )
        assert service.decisions.flush() == 6
        assert run.metric("remixer_policy_decision_log_dropped_total") == 4
        dropped = registry.get_sample_value(
            "remixer_shipping_records_dropped_total", {"stream": "decisions", "reason": "too_large"}
        )
        assert dropped == 4
    finally:
        await hub.close()


async def test_http_listener_refuses_a_taken_port(policy_factory: PolicyFactory) -> None:
    first = await policy_factory(policy=LIMITED)
    with pytest.raises(OSError):
        await policy_factory(policy=LIMITED, http_address=f"127.0.0.1:{first.http_port}")


@pytest.mark.parametrize("compiled", [True, False], ids=["wire-reader", "upb-only"])
async def test_grpc_cache_hits_log_their_own_request(
    policy_factory: PolicyFactory, monkeypatch: pytest.MonkeyPatch, compiled: bool
) -> None:
    """Over gRPC a hit is found from the request's bytes (its record read from them too); without the
    compiled reader (no C compiler at install) the same through upb."""
    if not compiled:
        for name in ("KeyReader", "read_input", "log_fields"):
            monkeypatch.setattr(grpc_authz, name, None)
    run = await policy_factory(policy=LIMITED)

    def request(request_id: str, path: str) -> bytes:
        msg = external_auth_pb2.CheckRequest()
        msg.attributes.source.address.socket_address.address = "10.1.2.3"
        http = msg.attributes.request.http
        http.method, http.path, http.id = "GET", path, request_id
        http.headers["x-request-id"] = request_id
        return bytes(msg.SerializeToString())

    async with grpc.aio.insecure_channel(f"127.0.0.1:{run.grpc_port}") as channel:
        check = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")

        async def rule_of(data: bytes) -> str:
            answer = external_auth_pb2.CheckResponse.FromString(await check(data))
            return str(answer.dynamic_metadata["rule"])

        assert await rule_of(request("rid-1", "/admin/x")) == "deny-admin"
        assert await rule_of(request("rid-2", "/admin/x")) == "deny-admin"
        assert run.metric("remixer_policy_cache_hits_total") == 1
        assert run.metric("remixer_policy_cache_misses_total") == 1
        records = run.sinks.sink("decisions").records
        await eventually(lambda: len(records) >= 2, what="two decision records")
        logged = {key: orjson.loads(value) for key, value in records}
        assert logged[b"rid-2"]["cached"] is True
        assert logged[b"rid-1"]["cached"] is False
        # Misses too are recorded from the request's bytes.
        assert logged[b"rid-1"]["path"] == logged[b"rid-2"]["path"] == "/admin/x"
        assert logged[b"rid-1"]["source_address"] == "10.1.2.3"
        assert logged[b"rid-2"]["path"] == "/admin/x"
        assert logged[b"rid-2"]["source_address"] == "10.1.2.3"
        assert logged[b"rid-2"]["rule"] == "deny-admin"

        # A new snapshot gets a new key reader and an empty cache.
        assert await rule_of(request("rid-3", "/open")) == "default"
        assert await rule_of(request("rid-4", "/open")) == "default"
        response = await run.put(
            "rules", "close", {"action": "deny", "match": {"request.path": {"exact": "/open"}}}
        )
        assert response.status_code == 200
        await eventually(lambda: run.part.service.snapshot.rule_count == 4, what="the new snapshot")
        assert await rule_of(request("rid-5", "/open")) == "close"


@pytest.mark.parametrize(
    ("setting", "kind", "status", "rule"),
    [
        ("default", "deny", 451, "default"),
        ("allow", "allow", 0, "undecodable"),
        ("deny", "deny", 451, "undecodable"),
    ],
)
async def test_undecodable_requests_are_answered_by_the_setting(
    policy_factory: PolicyFactory, setting: str, kind: str, status: int, rule: str
) -> None:
    """Bytes that are no CheckRequest (a string field that is not UTF-8) are decided by
    undecodable_decision, not by rules reading attributes that cannot be trusted."""
    run = await policy_factory(
        policy={"rules": [{"id": "open", "action": "allow", "match": {"request.path": {"present": False}}}]},
        undecodable_decision=setting,
        default_decision="deny",
        default_deny_status=451,
    )
    msg = external_auth_pb2.CheckRequest()
    msg.attributes.request.http.path = "/\u00e9"
    data = bytes(msg.SerializeToString()).replace("/\u00e9".encode(), b"/\xff\xfe")
    with pytest.raises(DecodeError, match="bad UTF-8"):
        external_auth_pb2.CheckRequest.FromString(data)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{run.grpc_port}") as channel:
        check = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        for _ in range(2):
            answer = external_auth_pb2.CheckResponse.FromString(await check(data))
            assert str(answer.dynamic_metadata["rule"]) == rule
            if kind == "allow":
                assert answer.status.code == 0
            else:
                assert answer.status.code == 7
                assert answer.denied_response.status.code == status
    assert run.metric("remixer_policy_odd_inputs_total", kind="undecodable") == 2
    assert run.metric("remixer_policy_checks_total", decision=kind, rule=rule) == 2


async def polls(service: PolicyService, count: int) -> None:
    """Until the reload loop has read the files and the store `count` more times (a poll that reads the
    store resets the staleness)."""
    for _ in range(count):
        since = time.monotonic()

        def polled(since: float = since) -> bool:
            return time.monotonic() - service.staleness() > since

        await eventually(polled, what="a policy poll")


async def test_a_broken_policy_file_is_reported_once_per_change_and_in_readyz(
    policy_factory: PolicyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_policy(tmp_path, LIMITED)
    run = await policy_factory(policy_files=[path], reload_interval=0.05)
    service = run.part.service
    revision = service.snapshot.revision
    caplog.set_level(logging.ERROR, logger="remixer.policy")

    def errors() -> float:
        return run.metric("remixer_policy_reload_errors_total", source="file")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]

    path.write_text("rules:\n  - id: a\n    action: deny\n    match: {}\n  - id: b: c\n")
    await eventually(lambda: errors() == 1, what="the YAML error counted")
    await polls(service, 3)  # three more polls of the same broken file: nothing more said or counted
    assert errors() == 1
    assert len(said()) == 1
    assert f"{path}:5:10: mapping values are not allowed here" in said()[0]
    readiness = run.part.readiness()
    assert readiness.ready
    assert f"policy file {path} broken" in readiness.detail
    assert f"(serving revision {revision})" in readiness.detail
    assert f"{path}:5:10: mapping values are not allowed here" in readiness.detail

    # Another broken edit is a new change: said and counted once more, with every invalid field.
    path.write_text(
        yaml.safe_dump({"rules": [{"id": "a", "action": "nope", "match": {}}, {"id": "b", "action": "deny"}]})
    )
    await eventually(lambda: errors() == 2, what="the second broken edit counted")
    assert "rule 'a': field action:" in said()[1]
    assert "rule 'b': field match: Field required" in said()[1]
    await polls(service, 3)
    assert errors() == 2

    path.write_text(yaml.safe_dump(LIMITED))
    await eventually(lambda: "broken" not in run.part.readiness().detail, what="the file loads again")
    assert errors() == 2


async def test_a_broken_policy_file_can_make_the_replica_not_ready(
    policy_factory: PolicyFactory, tmp_path: Path
) -> None:
    path = write_policy(tmp_path, LIMITED)
    run = await policy_factory(policy_files=[path], ready_with_broken_file=False)
    assert run.part.readiness().ready
    path.write_text("rules:\n  - id: a\n\t  action: deny\n")
    await eventually(lambda: not run.part.readiness().ready, what="not ready")
    assert f"{path}:3:1: found character '\\t' that cannot start any token" in run.part.readiness().detail
    path.write_text(yaml.safe_dump(LIMITED))
    await eventually(lambda: run.part.readiness().ready, what="ready again")


def _timed_compile(data: dict[str, object]) -> float:
    started = time.perf_counter()
    rules.compile_snapshot(documents.parse_document(data), revision=1)
    return time.perf_counter() - started


async def test_compiling_a_large_policy_does_not_stall_checks(policy_factory: PolicyFactory) -> None:
    """A write of a 100k-entry address list is compiled twice (validation in the write, then the
    reload), ~0.5 s of CPU each on this machine: in a thread, so Checks on the event loop go on."""
    run = await policy_factory(policy=LIMITED)
    service = run.part.service
    entries = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(100_000)]
    # One compile of that policy, timed here in the same run (the faster of two: load only adds): a loop
    # that waited for a compile would stall at least this long, however loaded the machine is.
    big = {**LIMITED, "lists": [{"name": "big", "kind": "ip", "entries": entries}]}
    compile_s = min(_timed_compile(big) for _ in range(2))
    gaps: list[float] = []
    writing = True

    async def checks() -> None:
        last = time.perf_counter()
        while writing:
            assert (await decide(service, CheckInput(method="GET", path="/admin/x"))).rule_id == "deny-admin"
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    checking = asyncio.create_task(checks())
    started = time.perf_counter()
    written = await run.put("lists", "big", {"kind": "ip", "entries": entries})
    took = time.perf_counter() - started
    writing = False
    await checking
    assert written.status_code == 200, written.text
    assert run.part.service.snapshot.document.lists[0].name == "big"
    import sys

    print("GAPS", round(max(gaps), 3), round(compile_s, 3), round(took, 3), file=sys.stderr)
    assert took > compile_s  # the write did compile...
    assert max(gaps) < compile_s / 2, (max(gaps), compile_s, took)  # ...and the loop kept answering
