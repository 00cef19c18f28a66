"""Scenarios against a real Prometheus fed by promtool backfill: TTL, guards, passthrough discovery,
reporter fallback, unknown handling, escaping, name collisions, thousands of callees."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine

from controller.adapters.prometheus import parse_vector
from controller.app import compose
from controller.errors import SourceUnavailable
from controller.reconciling import loop
from controller.settings import ControllerSettings
from remixer.kit.calledges import call_edges
from remixer.kit.calledges import metadata as call_edges_metadata
from tests.controller.conftest import hosts, read_dir_sidecars
from tests.controller.helpers import run_at, run_cli
from tests.controller.meshdata import call, fqdn
from tests.realparts.prometheus import PrometheusFactory, openmetrics_text

DAY = 86400.0
# In every generated Sidecar with default settings: the control plane and remixer's own namespace.
PINNED = ["istio-system/*", "remixer/*"]


def _settings(url: str, **overrides: object) -> ControllerSettings:
    values: dict[str, object] = {
        "prometheus_url": url,
        "window": "1h",
        "prometheus_timeout_seconds": 5,
        **overrides,
    }
    return ControllerSettings.model_validate(values)


async def test_first_run_writes_one_sidecar_per_workload_and_rerun_writes_nothing(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    series = [
        call(now, source=("shop", "frontend-v1"), service=("shop", "cart")),
        call(now, source=("shop", "frontend-v1"), service=("pay", "billing"), protocol="grpc"),
        call(now, source=("shop", "cart-v1"), service=("data", "redis"), protocol="tcp"),
        # Gateways live in istio-system and ignore Sidecars: never get one.
        call(now, source=("istio-system", "istio-ingressgateway"), service=("shop", "frontend")),
    ]
    prom = prometheus_factory(openmetrics=openmetrics_text(series))
    out = tmp_path / "sidecars"
    summary = await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=now)
    assert summary.outcome == "wrote", summary.message
    found = read_dir_sidecars(out)
    # Leaves too: billing-v1 and redis-v1 only receive calls, and still get a scope (the pinned hosts).
    assert sorted(found) == [
        "data/remixer-redis-v1",
        "pay/remixer-billing-v1",
        "shop/remixer-cart-v1",
        "shop/remixer-frontend-v1",
    ]
    assert hosts(found["shop/remixer-frontend-v1"]) == [
        "istio-system/*",
        f"pay/{fqdn('billing', 'pay')}",
        "remixer/*",
        f"shop/{fqdn('cart', 'shop')}",
    ]
    assert hosts(found["shop/remixer-cart-v1"]) == ["data/" + fqdn("redis", "data"), *PINNED]
    assert hosts(found["pay/remixer-billing-v1"]) == PINNED
    assert hosts(found["data/remixer-redis-v1"]) == PINNED
    # Selected by the labels Istio's injector puts on every pod, never by a guessed app label.
    assert found["shop/remixer-frontend-v1"]["spec"]["workloadSelector"]["labels"] == {
        "service.istio.io/canonical-name": "frontend",
        "service.istio.io/canonical-revision": "v1",
    }
    assert found["shop/remixer-frontend-v1"]["spec"]["outboundTrafficPolicy"] == {"mode": "ALLOW_ANY"}
    # The xDS estimate counts every workload, leaves included (the gateway is not ours to scope).
    assert summary.shrink is not None
    assert summary.shrink.workloads == 4
    assert summary.shrink.clusters_after < summary.shrink.clusters_before
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*.yaml")}
    again = await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=now + 60)
    assert (again.outcome, again.written, again.deleted, again.unchanged) == ("nothing-to-write", 0, 0, 4)
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("*/*.yaml")}


async def test_hosts_persist_for_the_ttl_and_leave_after_it(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    earlier = now - 2 * DAY
    series = [
        call(earlier, source=("shop", "frontend-v1"), service=("shop", "cart")),
        call(earlier, source=("shop", "frontend-v1"), service=("shop", "search")),
        call(now, source=("shop", "frontend-v1"), service=("shop", "cart")),
    ]
    prom = prometheus_factory(openmetrics=openmetrics_text(series))
    out = tmp_path / "out"
    first = await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=earlier)
    assert first.outcome == "wrote"
    # Today search was not called, but it was two days ago: within the 7-day TTL it stays.
    kept = await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=now)
    assert kept.outcome == "nothing-to-write", kept.message
    assert f"shop/{fqdn('search', 'shop')}" in hosts(read_dir_sidecars(out)["shop/remixer-frontend-v1"])
    # With a 1-day TTL it has expired; removing 1 of 3 hosts trips the 20% removal guard...
    refused = await run_at(_settings(prom.url, ttl="1d"), sink=f"dir:{out}", data_dir=tmp_path, now=now)
    assert refused.outcome == "refused"
    assert "--force" in refused.message
    assert f"shop/{fqdn('search', 'shop')}" in hosts(read_dir_sidecars(out)["shop/remixer-frontend-v1"])
    # ...until forced.
    forced = await run_at(
        _settings(prom.url, ttl="1d"), sink=f"dir:{out}", data_dir=tmp_path, now=now, force=True
    )
    assert forced.outcome == "wrote"
    # search-v1 itself was not seen for the TTL either: its scope is pruned.
    assert [(c.name, c.action, c.removed) for c in forced.changes if c.removed] == [
        ("remixer-frontend-v1", "update", (f"shop/{fqdn('search', 'shop')}",)),
        ("remixer-search-v1", "delete", tuple(PINNED)),
    ]
    assert hosts(read_dir_sidecars(out)["shop/remixer-frontend-v1"]) == [
        "istio-system/*",
        "remixer/*",
        f"shop/{fqdn('cart', 'shop')}",
    ]


async def test_far_fewer_edges_than_last_run_refuses_to_write(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    earlier = now - 3 * 3600
    series = [call(earlier, source=("shop", f"svc{i}-v1"), service=("shop", f"dep{i}")) for i in range(10)]
    series += [call(now, source=("shop", "svc0-v1"), service=("shop", "dep0"))]
    prom = prometheus_factory(openmetrics=openmetrics_text(series))
    out = tmp_path / "out"
    assert (
        await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=earlier)
    ).written == 20  # 10 callers and their 10 leaves
    snapshot = {p: p.read_text() for p in out.glob("*/*.yaml")}
    short = await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=now)
    assert short.outcome == "refused"
    assert "less than 50%" in short.message
    assert snapshot == {p: p.read_text() for p in out.glob("*/*.yaml")}


def test_empty_prometheus_refuses_and_down_prometheus_is_a_source_failure(
    prometheus_factory: PrometheusFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prom = prometheus_factory()
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        ["run-once", "--prometheus-url", prom.url, "--sink", f"dir:{out}", "--data-dir", str(tmp_path)],
        capsys,
    )
    assert code == 1
    assert "no call edges" in stdout
    assert not out.exists()
    prom.stop()
    code, stdout, _ = run_cli(
        [
            "run-once",
            "--prometheus-url",
            prom.url,
            "--sink",
            f"dir:{out}",
            "--data-dir",
            str(tmp_path),
            "--output",
            "json",
        ],
        capsys,
    )
    assert code == 3
    assert "unreachable" in json.loads(stdout)["message"]
    assert not out.exists()


async def test_prometheus_errors_and_slowness_fail_cleanly(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    prom = prometheus_factory(
        openmetrics=openmetrics_text([call(now, source=("a", "w-v1"), service=("b", "s"))])
    )
    out = tmp_path / "out"
    # A slow Prometheus: stop the real process (SIGSTOP), so connections hang until our timeout.
    assert prom.process is not None
    prom.process.send_signal(19)
    try:
        started = time.monotonic()
        slow = await run_at(
            _settings(prom.url, prometheus_timeout_seconds=1), sink=f"dir:{out}", data_dir=tmp_path, now=now
        )
        assert slow.outcome == "source-failure"
        assert "did not answer in time" in slow.message
        assert time.monotonic() - started < 10
    finally:
        prom.process.send_signal(18)
    # An erroring Prometheus: the real server answers 422 when a query would load too many samples.
    strict = prometheus_factory(
        openmetrics=openmetrics_text([call(now, source=("a", "w-v1"), service=("b", "s"))]),
        extra_args=["--query.max-samples=1"],
    )
    bad = await run_at(_settings(strict.url), sink=f"dir:{out}", data_dir=tmp_path, now=now)
    assert bad.outcome == "source-failure"
    assert "refused the query" in bad.message
    assert not out.exists()


async def test_passthrough_calls_from_the_call_edge_table_are_discovered(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    prom = prometheus_factory(
        openmetrics=openmetrics_text([call(now, source=("shop", "frontend-v1"), service=("shop", "cart"))])
    )
    # Telemetry's default location: DATA_DIR/edges.db, found without any setting.
    database = tmp_path / "edges.db"
    engine = create_engine(f"sqlite:///{database}")
    call_edges_metadata.create_all(engine)
    seen = dt.datetime.fromtimestamp(now - 30, tz=dt.UTC)
    with engine.begin() as connection:
        connection.execute(
            call_edges.insert(),
            [
                # The first call to a service not in scope went through PassthroughCluster: telemetry saw it.
                {
                    "source_namespace": "shop",
                    "source_workload": "frontend-v1",
                    "destination_service": fqdn("reviews", "books"),
                    "destination_port": 9080,
                    "protocol": "http",
                    "first_seen": seen,
                    "last_seen": seen,
                    "count": 1,
                },
                {
                    "source_namespace": "shop",
                    "source_workload": "frontend-v1",
                    "destination_service": "10.1.2.3",
                    "destination_port": 80,
                    "protocol": "tcp",
                    "first_seen": seen,
                    "last_seen": seen,
                    "count": 1,
                },
                # Too old for the window: ignored.
                {
                    "source_namespace": "shop",
                    "source_workload": "frontend-v1",
                    "destination_service": fqdn("old", "books"),
                    "destination_port": 80,
                    "protocol": "http",
                    "first_seen": seen - dt.timedelta(days=3),
                    "last_seen": seen - dt.timedelta(days=3),
                    "count": 5,
                },
            ],
        )
    engine.dispose()
    out = tmp_path / "out"
    summary = await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=now)
    assert summary.outcome == "wrote", summary.message
    assert hosts(read_dir_sidecars(out)["shop/remixer-frontend-v1"]) == [
        f"books/{fqdn('reviews', 'books')}",
        "istio-system/*",
        "remixer/*",
        f"shop/{fqdn('cart', 'shop')}",
    ]


async def test_reporter_fallback_unknowns_escaping_and_collisions(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    selector = {"mesh_id": 'mesh "one"\nprod\\x'}
    series = [
        # Source-reported and destination-reported twins: one edge.
        call(now, source=("a", "web-v1"), service=("a", "cart"), reporter="source", extra=selector),
        call(now, source=("a", "web-v1"), service=("a", "cart"), reporter="destination", extra=selector),
        # A caller whose own proxy does not report: only the destination saw it.
        call(now, source=("a", "batch-v1"), service=("b", "cart"), reporter="destination", extra=selector),
        # Same service and workload names in two namespaces.
        call(now, source=("b", "web-v1"), service=("b", "cart"), extra=selector),
        call(now, source=("b", "web-v1"), service=("a", "cart"), extra=selector),
        # Unknown source (outside the mesh), PassthroughCluster, a label value no Kubernetes name can hold.
        call(
            now, source=("unknown", "unknown"), service=("a", "cart"), reporter="destination", extra=selector
        ),
        call(now, source=("a", "web-v1"), service=("unknown", "PassthroughCluster"), extra=selector),
        call(now, source=("a", 'evil"wl\nx'), service=("a", "cart"), extra=selector),
        # Another mesh: filtered out by the escaped selector.
        call(now, source=("a", "web-v1"), service=("a", "other"), extra={"mesh_id": "two"}),
    ]
    prom = prometheus_factory(openmetrics=openmetrics_text(series))
    out = tmp_path / "out"
    summary = await run_at(
        _settings(prom.url, query_selector=selector), sink=f"dir:{out}", data_dir=tmp_path, now=now
    )
    assert summary.outcome == "wrote", summary.message
    assert summary.skipped_rows >= 1
    found = read_dir_sidecars(out)
    assert sorted(found) == [
        "a/remixer-batch-v1",
        "a/remixer-cart-v1",
        "a/remixer-web-v1",
        "b/remixer-cart-v1",
        "b/remixer-web-v1",
    ]
    assert hosts(found["a/remixer-web-v1"]) == [f"a/{fqdn('cart', 'a')}", *PINNED]
    assert hosts(found["a/remixer-batch-v1"]) == [f"b/{fqdn('cart', 'b')}", *PINNED]
    assert hosts(found["b/remixer-web-v1"]) == [
        f"a/{fqdn('cart', 'a')}",
        f"b/{fqdn('cart', 'b')}",
        *PINNED,
    ]


async def test_a_workload_with_thousands_of_callees(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    series = [
        call(now, source=("big", "hub-v1"), service=(f"ns{i % 50}", f"svc{i}"), minutes=3)
        for i in range(3000)
    ]
    prom = prometheus_factory(openmetrics=openmetrics_text(series))
    out = tmp_path / "out"
    summary = await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=now)
    assert summary.outcome == "wrote", summary.message
    listed = hosts(read_dir_sidecars(out)["big/remixer-hub-v1"])
    assert len(listed) == 3002
    assert listed == sorted(listed)


async def test_dir_sink_prunes_only_its_own_files_and_namespace_filter_limits_the_run(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    series = [
        call(now, source=("shop", "frontend-v1"), service=("shop", "cart")),
        call(now, source=("pay", "billing-v1"), service=("data", "ledger")),
    ]
    prom = prometheus_factory(openmetrics=openmetrics_text(series))
    out = tmp_path / "out"
    (out / "shop").mkdir(parents=True)
    ours = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {
            "name": "remixer-retired",
            "namespace": "shop",
            "labels": {"app.kubernetes.io/managed-by": "remixer-controller"},
        },
        "spec": {
            "workloadSelector": {"labels": {"app": "retired"}},
            "egress": [{"hosts": ["istio-system/*", "x/y"]}],
        },
    }
    theirs = {**ours, "metadata": {"name": "hand-made", "namespace": "shop"}}
    theirs["spec"] = {"workloadSelector": {"labels": {"app": "legacy"}}, "egress": [{"hosts": ["*/*"]}]}
    (out / "shop" / "remixer-retired.yaml").write_text(yaml.safe_dump(ours))
    (out / "shop" / "hand-made.yaml").write_text(yaml.safe_dump(theirs))
    (out / "pay").mkdir()
    (out / "pay" / "remixer-old.yaml").write_text(
        yaml.safe_dump({**ours, "metadata": {**ours["metadata"], "name": "remixer-old", "namespace": "pay"}})
    )
    # A full run first (2 edges) into another directory, sharing the store: the shop-only run below
    # sees 1 edge, which must be compared with shop-only history, not with the full run.
    full = await run_at(_settings(prom.url), sink=f"dir:{tmp_path / 'full'}", data_dir=tmp_path, now=now)
    assert full.edges == 2
    summary = await run_at(
        _settings(prom.url, max_removed_percent=100),
        sink=f"dir:{out}",
        data_dir=tmp_path,
        now=now,
        namespaces=["shop"],
    )
    assert summary.outcome == "wrote", summary.message
    assert sorted(read_dir_sidecars(out)) == [
        "pay/remixer-old",
        "shop/hand-made",
        "shop/remixer-cart-v1",
        "shop/remixer-frontend-v1",
    ]


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=12,
    )
)
@hypothesis_settings(max_examples=200, deadline=None)
def test_malformed_prometheus_results_are_rejected_never_misread(result: object) -> None:
    try:
        rows = parse_vector(result, "http://prom")
    except SourceUnavailable as error:
        message = str(error)
        rows = None
    if rows is None:
        assert "malformed" in message
        return
    assert isinstance(result, list)
    assert all(isinstance(row.value, float) for row in rows)


class _AnsweringProxy:
    """In front of the real Prometheus: forwards queries, or answers them the way a broken Prometheus,
    a proxy or a truncated connection would (shapes from prometheus/prometheus web/api/v1/api.go)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "forward"
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = urllib.request.Request(
                    f"{proxy.upstream}{self.path}",
                    data=body,
                    headers={"content-type": self.headers.get("content-type", "")},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = response.read()
                data = proxy.rewrite(answer)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # shutdown() returns at the loop's next poll: 0.5 s by default.
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def rewrite(self, answer: bytes) -> bytes:
        parsed = json.loads(answer)
        result = parsed["data"]["result"]
        if self.mode == "error-status":
            return (
                b'{"status":"error","errorType":"execution","error":"query processing would load too many"}'
            )
        if self.mode == "missing-data":
            return b'{"status":"success"}'
        if self.mode == "partial":
            return answer[: len(answer) // 2]
        if self.mode == "wrong-types":
            for sample in result:
                sample["value"] = [sample["value"][0], float(sample["value"][1])]
            return json.dumps(parsed).encode()
        if self.mode == "matrix":
            parsed["data"] = {
                "resultType": "matrix",
                "result": [{"metric": s["metric"], "values": [s["value"]]} for s in result],
            }
            return json.dumps(parsed).encode()
        return answer

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


BROKEN_ANSWERS = ("error-status", "missing-data", "partial", "wrong-types", "matrix")


def test_unexpected_prometheus_answers_fail_the_run_and_write_nothing(
    prometheus_factory: PrometheusFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    prom = prometheus_factory(
        openmetrics=openmetrics_text([call(now, source=("shop", "web-v1"), service=("shop", "cart"))])
    )
    proxy = _AnsweringProxy(prom.url)
    out = tmp_path / "out"
    try:
        for mode in BROKEN_ANSWERS:
            proxy.mode = mode
            code, stdout, stderr = run_cli(
                [
                    "run-once",
                    "--prometheus-url",
                    proxy.url,
                    "--sink",
                    f"dir:{out}",
                    "--data-dir",
                    str(tmp_path),
                ],
                capsys,
            )
            assert code == 3, (mode, stdout, stderr)
            assert "source-failure: Prometheus at" in stdout, mode
            assert "malformed" in stdout, mode
            assert "Traceback" not in stdout + stderr
            assert not out.exists(), mode
        proxy.mode = "forward"
        code, stdout, _ = run_cli(
            ["run-once", "--prometheus-url", proxy.url, "--sink", f"dir:{out}", "--data-dir", str(tmp_path)],
            capsys,
        )
        assert code == 0, stdout
        assert sorted(read_dir_sidecars(out)) == ["shop/remixer-cart-v1", "shop/remixer-web-v1"]
    finally:
        proxy.stop()


async def test_the_loop_counts_source_failures_retries_and_recovers(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    prom = prometheus_factory(
        openmetrics=openmetrics_text([call(now, source=("shop", "web-v1"), service=("shop", "cart"))])
    )
    proxy = _AnsweringProxy(prom.url)
    registry = CollectorRegistry()
    out = tmp_path / "out"
    composition = await compose(
        _settings(proxy.url), sink_spec=f"dir:{out}", data_dir=tmp_path, registry=registry
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(loop(composition.reconciler, interval=0.2, stop=stop, clock=lambda: now))

    def runs(outcome: str) -> float:
        return registry.get_sample_value("remixer_controller_runs_total", {"outcome": outcome}) or 0

    try:
        for mode in BROKEN_ANSWERS:
            proxy.mode = mode
            seen = runs("source-failure")
            deadline = time.monotonic() + 20
            while runs("source-failure") < seen + 2:
                assert not runner.done(), runner
                assert time.monotonic() < deadline, mode
                await asyncio.sleep(0.05)
            assert not out.exists(), mode
        proxy.mode = "forward"
        deadline = time.monotonic() + 20
        while runs("wrote") < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert sorted(read_dir_sidecars(out)) == ["shop/remixer-cart-v1", "shop/remixer-web-v1"]
    finally:
        stop.set()
        await runner
        await composition.close()
        proxy.stop()


def test_a_bad_query_selector_is_a_usage_error_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "remixer.yaml"
    config.write_text(yaml.safe_dump({"controller": {"query_selector": {"source-cluster": "prod"}}}))
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "remixer"),
            "controller",
            "--config",
            str(config),
            "run-once",
            "--sink",
            "stdout",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "query_selector" in lines[0]
    assert "source-cluster" in lines[0]


async def test_one_workload_losing_most_of_its_hosts_is_refused_by_name_in_a_large_mesh(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    earlier = now - 2 * DAY
    series = [call(earlier, source=("shop", "hub-v1"), service=("shop", f"dep{i}")) for i in range(7)]
    series += [call(now, source=("shop", "hub-v1"), service=("shop", f"dep{i}")) for i in range(2)]
    # A large rest of the mesh, unchanged: 4 removed hosts are a tiny share of all scoped hosts.
    for when in (earlier, now):
        series += [call(when, source=("big", f"w{i}-v1"), service=("big", f"s{i}")) for i in range(40)]
    prom = prometheus_factory(openmetrics=openmetrics_text(series))
    out = tmp_path / "out"
    assert (
        await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=earlier)
    ).outcome == "wrote"
    before = {p: p.read_text() for p in out.glob("*/*.yaml")}
    # With a 1-day TTL hub-v1 loses dep2..dep6 (5 of its 9 hosts with the pinned two; mesh-wide about 7%).
    refused = await run_at(_settings(prom.url, ttl="1d"), sink=f"dir:{out}", data_dir=tmp_path, now=now)
    assert refused.outcome == "refused", refused.message
    assert "shop/hub-v1 (5 of 9)" in refused.message
    assert "scoped hosts (" not in refused.message  # the mesh-wide guard alone would have let it pass
    assert before == {p: p.read_text() for p in out.glob("*/*.yaml")}
    allowed = await run_at(
        _settings(prom.url, ttl="1d", max_removed_percent_per_workload=60),
        sink=f"dir:{out}",
        data_dir=tmp_path,
        now=now,
    )
    assert allowed.outcome == "wrote", allowed.message
    assert len(hosts(read_dir_sidecars(out)["shop/remixer-hub-v1"])) == 4


async def test_a_file_the_os_refuses_is_reported_and_the_others_are_written(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    now = time.time()
    series = [
        call(now, source=("shop", "web-v1"), service=("shop", "cart")),
        call(now, source=("pay", "billing-v1"), service=("pay", "ledger")),
    ]
    prom = prometheus_factory(openmetrics=openmetrics_text(series))
    out = tmp_path / "out"
    out.mkdir()
    (out / "pay").write_text("a file where the namespace directory should be")
    summary = await run_at(_settings(prom.url), sink=f"dir:{out}", data_dir=tmp_path, now=now)
    assert summary.outcome == "wrote", summary.message
    assert summary.failed == 2
    assert sorted(c.name for c in summary.changes if c.action == "failed") == [
        "remixer-billing-v1",
        "remixer-ledger-v1",
    ]
    assert sorted(p.name for p in (out / "shop").glob("*.yaml")) == [
        "remixer-cart-v1.yaml",
        "remixer-web-v1.yaml",
    ]
