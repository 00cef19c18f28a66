"""CLI (argument builders, exit codes, outputs), the admin graph API and page (headless Chromium),
the loop with its metrics, and migrations on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from controller.adapters.sql import DependencyStore
from controller.app import admin_router, compose
from controller.reconciling import loop
from controller.settings import ControllerSettings
from tests.controller.conftest import assert_valid_sidecar
from tests.controller.helpers import parser, run_cli
from tests.controller.meshdata import call
from tests.realparts.browser import dump_dom
from tests.realparts.prometheus import PrometheusFactory, openmetrics_text

POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def mesh_url(prometheus_factory: PrometheusFactory) -> str:
    now = time.time()
    series = [
        call(now, source=("shop", "frontend-v1"), service=("shop", "cart")),
        call(now, source=("shop", "frontend-v1"), service=("shop", "cart"), code="503", rate=0.5),
        call(now, source=("shop", "cart-v1"), service=("data", "redis"), protocol="tcp"),
        call(now, source=("unknown", "unknown"), service=("shop", "frontend"), reporter="destination"),
    ]
    return prometheus_factory(openmetrics=openmetrics_text(series)).url


def test_help_lists_every_option() -> None:
    root = parser()
    sub = root._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(sub) == {"run-once", "loop", "graph"}
    help_text = sub["run-once"].format_help()
    for option in (
        "--prometheus-url",
        "--sink",
        "--dry-run",
        "--namespace",
        "--force",
        "--output",
        "--window",
        "--ttl",
        "--graph-export",
        "--graph-out",
    ):
        assert option in help_text
    assert "--interval" in sub["loop"].format_help()


def test_bad_usage_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run-once", "--sink", "ftp:nowhere"], capsys)
    assert code == 2
    assert "dir:PATH, kube or stdout" in err
    code, _, err = run_cli(["run-once", "--sink", "stdout", "--window", "5 minutes"], capsys)
    assert code == 2
    assert "window" in err
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["run-once", "--output", "xml"])
    assert exit_info.value.code == 2


def test_stdout_sink_streams_yaml_and_keeps_the_summary_on_stderr(
    mesh_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["run-once", "--prometheus-url", mesh_url, "--sink", "stdout", "--data-dir", str(tmp_path)], capsys
    )
    assert code == 0
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert [d["metadata"]["name"] for d in docs] == [
        "remixer-redis-v1",
        "remixer-cart-v1",
        "remixer-frontend-v1",
    ]
    for doc in docs:
        assert_valid_sidecar(doc)
    assert "wrote:" in err
    assert "xDS estimate" in err


def test_json_summary_dry_run_and_graph_export(
    mesh_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "gitops"
    graph_file = tmp_path / "graph.graphml"
    code, out, _ = run_cli(
        [
            "run-once",
            "--prometheus-url",
            mesh_url,
            "--sink",
            f"dir:{out_dir}",
            "--data-dir",
            str(tmp_path),
            "--dry-run",
            "--output",
            "json",
            "--graph-export",
            "graphml",
            "--graph-out",
            str(graph_file),
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["outcome"] == "dry-run"
    assert [c["sidecar"] for c in summary["changes"]] == [
        "remixer-redis-v1",
        "remixer-cart-v1",
        "remixer-frontend-v1",
    ]
    assert summary["xds_estimate"]["clusters_before"] >= summary["xds_estimate"]["clusters_after"]
    per_sidecar = {p["sidecar"]: p for p in summary["xds_estimate"]["per_sidecar"]}
    assert per_sidecar["shop/remixer-frontend-v1"]["clusters_after"] == 1
    assert per_sidecar["shop/remixer-frontend-v1"]["clusters_before"] == 3
    assert not out_dir.exists()
    assert "wl_shop_frontend-v1" in nx.read_graphml(graph_file).nodes
    code, out, _ = run_cli(
        ["graph", "--prometheus-url", mesh_url, "--view", "service", "--format", "dot"], capsys
    )
    assert code == 0
    assert out.startswith('digraph "service"')
    code, out, _ = run_cli(["graph", "--prometheus-url", mesh_url, "--namespace", "data"], capsys)
    assert {e["target"] for e in json.loads(out)["edges"]} == {"wl_data_redis-v1"}


def test_graph_api(mesh_url: str) -> None:
    app = FastAPI()
    app.include_router(admin_router(ControllerSettings(prometheus_url=mesh_url)))
    client = TestClient(app)
    body = client.get("/v1/graph", params={"view": "workload"}).json()
    assert {n["id"] for n in body["nodes"]} >= {"wl_shop_frontend-v1", "wl_shop_cart-v1", "unknown_source"}
    to_cart = [
        e for e in body["edges"] if (e["source"], e["target"]) == ("wl_shop_frontend-v1", "wl_shop_cart-v1")
    ]
    assert len(to_cart) == 1
    assert to_cart[0]["protocol"] == "http"
    # 1.5 req/s of which 0.5 are 503s (rates are extrapolated by Prometheus, so compare the ratio).
    assert abs(to_cart[0]["error_rate"] / to_cart[0]["request_rate"] - 1 / 3) < 0.02
    assert (
        client.get("/v1/graph", params={"format": "dot"})
        .headers["content-type"]
        .startswith("text/vnd.graphviz")
    )
    assert "<graphml" in client.get("/v1/graph", params={"format": "graphml", "view": "app"}).text
    assert client.get("/v1/graph", params={"view": "nope"}).status_code == 400
    down = FastAPI()
    down.include_router(
        admin_router(
            ControllerSettings(prometheus_url="http://reader:s3cret@127.0.0.1:9", prometheus_retries=0)
        )
    )
    answer = TestClient(down).get("/v1/graph")
    assert answer.status_code == 503
    assert "unreachable" in answer.json()["detail"]
    assert "s3cret" not in answer.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def admin_server(mesh_url: str) -> Iterator[str]:
    app = FastAPI()
    app.include_router(admin_router(ControllerSettings(prometheus_url=mesh_url)))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_graph_page_draws_the_nodes_in_headless_chromium(admin_server: str, tmp_path: Path) -> None:
    done = dump_dom(f"{admin_server}/graph?view=workload", tmp_path / "profile")
    dom = done.stdout
    assert 'data-state="drawn"' in dom, done.stderr[-2000:]
    for node in ("wl_shop_frontend-v1", "wl_shop_cart-v1", "wl_data_redis-v1", "unknown_source"):
        assert f'data-id="{node}"' in dom
    assert dom.count("<line ") >= 3
    assert "frontend-v1 (shop)" in dom


async def test_loop_repeats_the_run_and_exposes_metrics(mesh_url: str, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    settings = ControllerSettings(prometheus_url=mesh_url)
    composition = await compose(
        settings, sink_spec=f"dir:{tmp_path / 'out'}", data_dir=tmp_path, registry=registry
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop(composition.reconciler, interval=0.2, stop=stop))
    deadline = time.monotonic() + 20
    while (
        registry.get_sample_value("remixer_controller_runs_total", {"outcome": "nothing-to-write"}) or 0
    ) < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    stop.set()
    runs = await task
    await composition.close()
    assert runs >= 2
    assert registry.get_sample_value("remixer_controller_runs_total", {"outcome": "wrote"}) == 1
    assert registry.get_sample_value("remixer_controller_sidecars_written_total") == 3
    # The first write adds every scoped host; the unchanged re-runs add and remove none.
    added = registry.get_sample_value("remixer_controller_hosts_added_total")
    assert added is not None
    assert added >= 2
    assert registry.get_sample_value("remixer_controller_hosts_removed_total") == 0
    before = registry.get_sample_value("remixer_controller_xds_clusters", {"scope": "before"})
    after = registry.get_sample_value("remixer_controller_xds_clusters", {"scope": "after"})
    assert before is not None
    assert after is not None
    assert after <= before


async def test_store_migrates_and_round_trips_on_postgresql() -> None:
    schema = f"controller_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(POSTGRES)
    async with admin.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        store = DependencyStore(POSTGRES, schema=schema)
        await store.migrate()
        await store.migrate()  # idempotent
        from controller.structs import StoredDependency, WorkloadInfo, WorkloadRef

        ref = WorkloadRef("shop", "web")
        deps = [StoredDependency(ref, f"shop/s{i}.shop.svc.cluster.local", 1.0, 2.0) for i in range(2500)]
        await store.save(
            upserts=deps,
            expired=[],
            infos=[WorkloadInfo(ref, (("app", "web"),))],
            now=2.0,
            edges=7,
            written=1,
        )
        await store.save(upserts=deps[:1], expired=deps[1:], infos=[], now=3.0, edges=1, written=0)
        loaded, infos, last = await store.load()
        assert [(d.host, d.first_seen, d.last_seen) for d in loaded] == [
            ("shop/s0.shop.svc.cluster.local", 1.0, 2.0)
        ]
        assert infos[ref].selector == (("app", "web"),)
        assert last == 1
        async with admin.connect() as connection:
            version = await connection.execute(
                text(f'SELECT version_num FROM "{schema}".alembic_version_controller')
            )
            assert version.scalar_one() == "c0001"
        await store.close()
    finally:
        async with admin.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


_SHIM = """
import argparse, sys
from controller import cli
from controller.settings import ControllerSettings
parser = argparse.ArgumentParser()
cli.add_arguments(parser)
sys.exit(cli.run(parser.parse_args(sys.argv[1:]), ControllerSettings()))
"""


def test_loop_command_serves_metrics_and_stops_on_sigterm(mesh_url: str, tmp_path: Path) -> None:
    import signal
    import sys
    import urllib.request

    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SHIM,
            "loop",
            "--prometheus-url",
            mesh_url,
            "--sink",
            f"dir:{tmp_path / 'out'}",
            "--data-dir",
            str(tmp_path),
            "--interval",
            "1s",
            "--metrics-address",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        body = ""
        while 'remixer_controller_runs_total{outcome="nothing-to-write"}' not in body:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, body
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                continue
        assert 'remixer_controller_xds_clusters{scope="before"}' in body
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert sorted(p.name for p in (tmp_path / "out").glob("*/*.yaml")) == [
        "remixer-cart-v1.yaml",
        "remixer-frontend-v1.yaml",
        "remixer-redis-v1.yaml",
    ]


def test_the_table_summary_names_the_workloads_left_without_a_sidecar(
    prometheus_factory: PrometheusFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    series = [
        # Two Deployments whose pods carry the same canonical name and revision: no selector tells them apart.
        call(now, source=("shop", "web-a"), service=("shop", "cart"), app="web"),
        call(now, source=("shop", "web-b"), service=("shop", "cart"), app="web"),
    ]
    url = prometheus_factory(openmetrics=openmetrics_text(series)).url
    code, out, _ = run_cli(
        [
            "run-once",
            "--prometheus-url",
            url,
            "--sink",
            f"dir:{tmp_path / 'out'}",
            "--data-dir",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, out
    assert "no Sidecar for 2 workloads (they keep the default scope):" in out
    assert "  shop/web-a: its pod labels (service.istio.io/canonical-name=web," in out
    assert "do not tell it apart from web-b" in out
    assert sorted(p.name for p in (tmp_path / "out" / "shop").glob("*.yaml")) == ["remixer-cart-v1.yaml"]
