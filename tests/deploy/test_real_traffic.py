"""End to end with real parts: a real Envoy started from deploy/envoy/envoy-remixer.yaml (ports substituted)
sends ext_authz checks and access logs to a real `remixer serve`; a real Prometheus scrapes remixer and the
controller loop; then every Grafana panel's PromQL is executed against that Prometheus and must return data.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from remixer.kit.envoy import EnvoyProcess, free_port
from tests.realparts.kafka import TansuBroker
from tests.realparts.prometheus import PrometheusServer
from tests.realparts.remixer import RemixerServer, remixer_config

from .paths import DEPLOY, REPO, kustomize_build, load_yaml_docs
from .schemas import crd_validators

ENVOY_EXAMPLE = DEPLOY / "envoy/envoy-remixer.yaml"
DASHBOARDS = sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
DEMO_POLICY = REPO / "policy/examples/demo-policy.yaml"
ADAPTIVE_RULE = {
    "name": "productpage",
    "target": {
        "service": "productpage.bookinfo.svc.cluster.local",
        "match": {"request.path": {"prefix": "/productpage"}},
    },
    "signals": [{"signal": "p99_latency_ms", "setpoint": 250}, {"signal": "error_ratio", "setpoint": 0.05}],
    "min_rate": 10,
    "max_rate": 1000,
    # Two of the example file's 1 s access-log flushes per tick: a shorter tick reads every other window
    # empty (NaN, "no fresh signal"), and a 1 s scrape in phase with the flush can miss every reading.
    "interval": 2.0,
    "dry_run": True,
}
# What Grafana would pick for $__rate_interval; wide enough to cover the whole run.
RATE_INTERVAL = "5m"


class _StatusHandler(BaseHTTPRequestHandler):
    """`/status/NNN` answers NNN, anything else 200; a few ms of jitter shapes the latency histograms."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        match = re.match(r"^/status/(\d{3})", self.path)
        status = int(match.group(1)) if match else 200
        body = b"x" * random.randint(10, 2000)
        time.sleep(random.uniform(0.001, 0.02))
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _EchoTcpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@dataclass
class Stack:
    workdir: Path
    remixer: RemixerServer
    envoy: EnvoyProcess
    prometheus: PrometheusServer
    ports: dict[str, int]
    query_time: float
    controller_metrics_url: str = ""

    def query(self, expr: str) -> dict[str, Any]:
        params = urllib.parse.urlencode({"query": expr, "time": f"{self.query_time:.3f}"})
        try:
            with urllib.request.urlopen(f"{self.prometheus.url}/api/v1/query?{params}", timeout=10) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))


def substitute_ports(node: Any, mapping: dict[int, int]) -> Any:
    """The example file's port numbers -> the test's free ports; an unmapped port is a test failure."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "port_value":
                assert value in mapping, f"port {value} in {ENVOY_EXAMPLE.name} has no test substitute"
                out[key] = mapping[value]
            else:
                out[key] = substitute_ports(value, mapping)
        return out
    if isinstance(node, list):
        return [substitute_ports(v, mapping) for v in node]
    return node


def _send_traffic(stack: Stack) -> None:
    ports = stack.ports
    inbound = f"http://127.0.0.1:{ports['inbound']}"
    outbound = f"http://127.0.0.1:{ports['outbound']}"
    with httpx.Client(timeout=10) as client:
        for i in range(3):  # three rounds, each in scrapes of its own: rate() panels see counters move
            for n in range(20):
                client.get(f"{inbound}/productpage", headers={"x-request-id": f"pp-{i}-{n}"})
                client.post(f"{inbound}/reviews", content=b"r" * (n * 50))
            for code in ("404", "503"):
                for _ in range(5):
                    client.get(f"{inbound}/status/{code}")
                    client.get(f"{outbound}/status/{code}")
            for _ in range(3):
                assert client.get(f"{inbound}/admin/users").status_code == 403  # deny-admin rule
                client.get(f"{inbound}/productpage", headers={"x-debug": "1"})  # dry-run rule
            for _ in range(12):  # over the demo policy's 5/s search limit
                client.get(f"{inbound}/search?q=x", headers={"x-user": "alice"})
            for n in range(20):
                client.get(f"{outbound}/details/{n}")
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", ports["tcp"]), timeout=5) as conn:
                    conn.sendall(b"ping" * 256)
                    conn.recv(65536)
            # A Check is counted before its answer: when Prometheus holds this count, it scraped the round.
            answered = stack.remixer.metric("remixer_policy_checks_total")
            _wait_for(stack, f"sum(remixer_policy_checks_total) >= {answered}")


def _wait_for(stack: Stack, expr: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.query_time = time.time()
        if stack.query(expr).get("data", {}).get("result"):
            return
        time.sleep(0.1)  # a query is cheap; Prometheus scrapes every second
    raise AssertionError(f"Prometheus never returned data for {expr}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("deploy-e2e")
    app = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    app.daemon_threads = True
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoTcpHandler)
    tcp.daemon_threads = True
    for server in (app, tcp):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    kafka = TansuBroker(workdir)
    # An adaptive limit in dry run over the inbound traffic (telemetry labels its destination_service
    # with the inbound service: the node's canonical service in its namespace), so the adaptive dashboard
    # has data and nothing is shed.
    adaptive = workdir / "adaptive.yaml"
    adaptive.write_text(yaml.safe_dump({"adaptive": [ADAPTIVE_RULE]}))
    config, remixer_ports = remixer_config(
        workdir,
        server={"parts": ["policy", "telemetry", "admin", "adaptive"]},
        policy={"policy_files": [str(DEMO_POLICY), str(adaptive)]},
        shipping={"kafka": {"enabled": True, "bootstrap_servers": [kafka.bootstrap], "linger_ms": 20}},
    )
    remixer = RemixerServer(workdir, config, remixer_ports)
    controller_metrics = free_port()
    prometheus_root = workdir / "prometheus"
    prometheus_root.mkdir()
    prometheus = PrometheusServer(
        prometheus_root,
        scrape_targets=[f"127.0.0.1:{remixer.admin_port}", f"127.0.0.1:{controller_metrics}"],
        scrape_interval="1s",
    )
    ports = {"envoy_admin": free_port(), "inbound": free_port(), "outbound": free_port(), "tcp": free_port()}
    boot = substitute_ports(
        yaml.safe_load(ENVOY_EXAMPLE.read_text()),
        {
            9901: ports["envoy_admin"],
            10000: ports["inbound"],
            10001: ports["outbound"],
            10002: ports["tcp"],
            9191: remixer.grpc_port,
            8000: app.server_address[1],
            9080: app.server_address[1],
            5432: tcp.server_address[1],
        },
    )
    (workdir / "envoy").mkdir(exist_ok=True)
    envoy = EnvoyProcess(boot, workdir=workdir / "envoy")
    controller: subprocess.Popen[bytes] | None = None
    try:
        kafka.start()
        # Side by side: Prometheus scrapes remixer whenever it is up. Envoy last: its clusters' first
        # health checks must find remixer serving.
        with ThreadPoolExecutor() as starting:
            for started in [starting.submit(remixer.start), starting.submit(prometheus.start)]:
                started.result()
        envoy.start()
        stack = Stack(
            workdir,
            remixer,
            envoy,
            prometheus,
            ports,
            time.time(),
            f"http://127.0.0.1:{controller_metrics}/metrics",
        )
        _send_traffic(stack)
        _wait_for(stack, 'istio_requests_total{reporter="source",response_code="503"}')
        _wait_for(stack, "istio_tcp_connections_opened_total")
        _wait_for(stack, 'remixer_shipping_records_sent_total{stream="access-logs"} > 0')
        _wait_for(stack, 'max_over_time(remixer_adaptive_signal{signal="p99_latency_ms"}[5m]) > 0')
        # The controller loop reads the same Prometheus and exposes remixer_controller_* for scraping.
        controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "remixer",
                "controller",
                # The ConfigMap's settings file, as the Kubernetes controller pods use it.
                "--config",
                str(DEPLOY / "kubernetes/base/remixer.yaml"),
                "loop",
                "--prometheus-url",
                prometheus.url,
                "--sink",
                f"dir:{workdir / 'sidecars'}",
                "--data-dir",
                str(workdir / "controller"),
                "--interval",
                "2s",
                "--metrics-address",
                f"127.0.0.1:{controller_metrics}",
            ],
            stdout=(workdir / "controller.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_for(stack, 'remixer_controller_runs_total{outcome=~"wrote|nothing-to-write"} > 0', timeout=60)
        _wait_for(stack, "remixer_controller_xds_clusters", timeout=30)
        # The dashboards' increase() and rate() over the controller's counters need two samples of them.
        for counter in ("remixer_controller_runs_total", "remixer_controller_run_duration_seconds_count"):
            _wait_for(stack, f"count_over_time({counter}[5m]) >= 2", timeout=30)
        stack.query_time = time.time()
        yield stack
    finally:
        if controller is not None:
            controller.terminate()
            try:
                controller.wait(10)
            except subprocess.TimeoutExpired:
                controller.kill()
                controller.wait()
        envoy.stop()
        prometheus.stop()
        remixer.stop()
        kafka.stop()
        app.shutdown()
        tcp.shutdown()
        app.server_close()
        tcp.server_close()


def test_the_example_envoy_file_sends_checks_and_access_logs_to_remixer(stack: Stack) -> None:
    stats = stack.envoy.stats("")
    assert stats["http.inbound_http.ext_authz.ok"] > 0
    assert stats["http.inbound_http.ext_authz.denied"] >= 3
    assert stats["access_logs.grpc_access_log.logs_written"] > 200
    assert stats.get("access_logs.grpc_access_log.logs_dropped", 0) == 0
    metrics = stack.remixer.metrics()
    for needle in (
        'reporter="destination"',
        'reporter="source"',
        'destination_service="details.bookinfo.svc.cluster.local"',
        'source_workload="productpage-v1"',
        'response_code="403"',
        "istio_tcp_sent_bytes_total",
    ):
        assert needle in metrics, needle


def _variable_values(stack: Stack, variable: dict[str, Any]) -> list[str]:
    if variable["type"] == "custom":
        return [o["value"] for o in variable["options"]]
    definition = variable["definition"]
    if match := re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition):
        metric, label = match.groups()
        body = stack.query(f"group by ({label}) ({metric})")
        assert body["status"] == "success", body
        values = sorted(r["metric"][label] for r in body["data"]["result"] if label in r["metric"])
    else:
        # Grafana's query_result(): one text line per series, `{labels} value timestamp`, cut by the regex.
        match = re.fullmatch(r"query_result\((.+)\)", definition)
        assert match, f"unsupported variable query {definition}"
        body = stack.query(match.group(1))
        assert body["status"] == "success", body
        cut = re.compile(variable["regex"].strip("/"))
        lines = [
            "{"
            + ",".join(f'{k}="{v}"' for k, v in r["metric"].items())
            + "} "
            + " ".join(map(str, r["value"]))
            for r in body["data"]["result"]
        ]
        values = sorted({m.group(1) for line in lines if (m := cut.fullmatch(line))})
    assert values, f"variable ${variable['name']} has no values"
    return values


def _substitute(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RATE_INTERVAL)
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_panel_query_parses_and_returns_data(stack: Stack, path: Path) -> None:
    board = json.loads(path.read_text())
    variables = [v for v in board["templating"]["list"] if v["type"] in {"query", "custom"}]
    choices = [[(v["name"], value) for value in _variable_values(stack, v)] for v in variables]
    combos = [dict(combo) for combo in itertools.product(*choices)] or [{}]
    empty: list[str] = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            returned = False
            for combo in combos:
                expr = _substitute(target["expr"], combo)
                body = stack.query(expr)
                assert body["status"] == "success", f"{panel['title']}: {expr}: {body.get('error')}"
                returned = returned or bool(body["data"]["result"])
            if not returned:
                empty.append(f"{panel['title']} [{target['refId']}]: {target['expr']}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def _exported_names(stack: Stack) -> set[str]:
    """Every metric family remixer and the controller loop register, with or without samples yet."""
    text = stack.remixer.metrics() + httpx.get(stack.controller_metrics_url, timeout=5).text
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter":
                names.add(name.removesuffix("_total") + "_total")
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_every_metric_the_alerts_and_dashboards_use_is_one_remixer_exports(stack: Stack) -> None:
    exported = _exported_names(stack)
    rules = yaml.safe_load((DEPLOY / "prometheus/remixer-alerts.rules.yaml").read_text())
    alerts = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for expr in alerts:  # alert expressions need no substitution: run them on the real data too
        body = stack.query(expr)
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
    panels = [
        t["expr"] for path in DASHBOARDS for p in json.loads(path.read_text())["panels"] for t in p["targets"]
    ]
    used = {name for expr in alerts + panels for name in re.findall(r"\b((?:istio|remixer)_[a-z_]+)\b", expr)}
    assert len(used) >= 30
    assert not used - exported, f"used but never exported by remixer: {sorted(used - exported)}"


def test_the_controller_with_the_configmap_settings_writes_valid_sidecars_keeping_remixer_in_scope(
    stack: Stack,
) -> None:
    validators = crd_validators()
    files = sorted((stack.workdir / "sidecars").rglob("*.yaml"))
    assert files, "the controller loop wrote no Sidecar"
    for path in files:
        for sidecar in load_yaml_docs(path):
            errors = [
                e.message for e in validators[(sidecar["apiVersion"], sidecar["kind"])].iter_errors(sidecar)
            ]
            assert not errors, f"{path.name}: {errors}"
            hosts = {h for egress in sidecar["spec"]["egress"] for h in egress["hosts"]}
            assert {"istio-system/*", "remixer/*"} <= hosts, f"{path.name}: {sorted(hosts)}"


def test_the_cronjob_command_runs_once_against_real_prometheus_data(stack: Stack, tmp_path: Path) -> None:
    """The CronJob's args as written, with only the cluster-specific values swapped for the test's."""
    (cron,) = [o for o in kustomize_build("kubernetes/base") if o["kind"] == "CronJob"]
    args = list(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    swaps = {
        "/etc/remixer/remixer.yaml": str(DEPLOY / "kubernetes/base/remixer.yaml"),
        "/var/lib/remixer": str(tmp_path / "state"),
        "kube": f"dir:{tmp_path / 'sidecars'}",  # no API server here: the dir sink writes the same objects
    }
    args = [swaps.get(a, a) for a in args]
    args[args.index("--prometheus-url") + 1] = stack.prometheus.url
    done = subprocess.run(
        [sys.executable, "-m", "remixer", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted((tmp_path / "sidecars").rglob("*.yaml")), done.stdout
