"""`remixer demo`: a real Envoy in front of a tiny upstream, remixer deciding and counting.

Everything runs on this machine on free ports and is cleaned up on exit: the upstream (a thread),
`remixer serve` (a subprocess, the same command a user would run) and Envoy (a subprocess).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import yaml

from remixer.kit import envoy
from remixer.kit.echo import EchoServer
from remixer.kit.serveproc import ServeProcess
from remixer.settings import Settings

# The metric the telemetry part increments for every access-log entry it decodes.
ENTRIES_METRIC = "remixer_telemetry_entries_received_total"

# Node metadata as istio-agent would set it, so the metrics carry real workload labels.
DEMO_NODE = {
    "id": "sidecar~127.0.0.1~productpage-v1-6b7f6db5d8-x2vqz.bookinfo~bookinfo.svc.cluster.local",
    "cluster": "productpage.bookinfo",
    "metadata": {
        "NAME": "productpage-v1-6b7f6db5d8-x2vqz",
        "NAMESPACE": "bookinfo",
        "WORKLOAD_NAME": "productpage-v1",
        "CLUSTER_ID": "Kubernetes",
        "LABELS": {
            "app": "productpage",
            "version": "v1",
            "service.istio.io/canonical-name": "productpage",
            "service.istio.io/canonical-revision": "v1",
        },
    },
}

# (method, path, headers) cycled through by the burst; the demo policy decides each.
TRAFFIC: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/productpage", {}),
    ("GET", "/api/v1/products/1", {}),
    ("GET", "/admin/users", {}),
    ("GET", "/api/v1/products/2?debug=1", {"x-user": "alice"}),
    ("POST", "/api/v1/orders", {"x-user": "mallory"}),
    ("GET", "/api/v1/ratings", {}),
]


def demo_policy_path() -> Path:
    return Path(str(resources.files("remixer") / "demo_policy.yaml"))


def demo_bootstrap(
    *, admin_port: int, listen_port: int, upstream_port: int, remixer_grpc_port: int
) -> dict[str, Any]:
    return envoy.bootstrap(
        admin_port=admin_port,
        node=DEMO_NODE,
        listeners=[
            envoy.http_listener(
                "ingress",
                listen_port,
                route_cluster="inbound|9080||",
                http_filters=[envoy.ext_authz_grpc_filter("remixer")],
                # The inbound side: denials (no upstream cluster) are booked by the destination reporter.
                access_log=[envoy.http_grpc_access_log("remixer", log_name="remixer_http_inbound")],
            )
        ],
        clusters=[
            envoy.grpc_cluster("remixer", "127.0.0.1", remixer_grpc_port),
            envoy.http_cluster("inbound|9080||", "127.0.0.1", upstream_port),
        ],
    )


def metric_value(metrics_text: str, name: str) -> float:
    """Sum of every sample of `name` (all label sets) in Prometheus text format."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.contextmanager
def demo_stack(settings: Settings, workdir: Path) -> Iterator[dict[str, Any]]:
    ports = {name: envoy.free_port() for name in ("grpc", "http_authz", "admin", "listen", "envoy_admin")}
    config = {
        "server": {
            "grpc_address": f"127.0.0.1:{ports['grpc']}",
            "admin_address": f"127.0.0.1:{ports['admin']}",
            "data_dir": str(workdir / "data"),
            "log_level": settings.server.log_level,
            "drain_seconds": 2,
        },
        "policy": {
            "http_address": f"127.0.0.1:{ports['http_authz']}",
            "policy_files": [str(demo_policy_path())],
        },
    }
    config_path = workdir / "remixer.yaml"
    config_path.write_text(yaml.safe_dump(config))
    remixer = ServeProcess(config_path, f"http://127.0.0.1:{ports['admin']}", workdir / "remixer.log")
    with EchoServer() as upstream:
        remixer.start()
        try:
            boot = demo_bootstrap(
                admin_port=ports["envoy_admin"],
                listen_port=ports["listen"],
                upstream_port=upstream.port,
                remixer_grpc_port=ports["grpc"],
            )
            with envoy.EnvoyProcess(boot, workdir=workdir / "envoy") as proxy:
                yield {"ports": ports, "remixer": remixer, "envoy": proxy, "workdir": workdir}
        finally:
            code = remixer.stop()
            if code not in (0, None):
                print(f"remixer serve exited with {code}; log tail:\n{remixer.log_tail()}", file=sys.stderr)


def send_burst(base_url: str, count: int) -> Counter[int]:
    codes: Counter[int] = Counter()
    # The Host a mesh client would use, so destination_service reads like Istio's.
    host = {"host": "productpage.bookinfo.svc.cluster.local:9080"}
    with httpx.Client(base_url=base_url, timeout=5, headers=host) as client:
        for i in range(count):
            method, path, headers = TRAFFIC[i % len(TRAFFIC)]
            response = client.request(method, path, headers={**headers, "x-request-id": f"demo-{i:05d}"})
            codes[response.status_code] += 1
    return codes


def wait_for_entries(admin_url: str, expected: int, timeout: float = 15.0) -> tuple[float, str]:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(admin_url + "/metrics", timeout=2).text
        if metric_value(text, ENTRIES_METRIC) >= expected:
            break
        time.sleep(0.2)
    return metric_value(text, ENTRIES_METRIC), text


def summary(codes: Counter[int], entries: float, metrics_text: str, envoy_stats: dict[str, int]) -> str:
    allowed = sum(n for code, n in codes.items() if code < 400)
    lines = [
        "remixer demo: Envoy 1.40 -> ext_authz (gRPC) + access logs (gRPC) -> remixer",
        f"  requests sent            {sum(codes.values())}",
        f"  allowed                  {allowed}",
        f"  denied (403)             {codes.get(403, 0)}",
        f"  rate-limited (429)       {codes.get(429, 0)}",
        f"  other                    {sum(n for c, n in codes.items() if c >= 400 and c not in (403, 429))}",
        f"  access-log entries recv  {int(entries)}",
        f"  envoy ext_authz ok/denied/error  {envoy_stats.get('ok', 0)}/{envoy_stats.get('denied', 0)}"
        f"/{envoy_stats.get('error', 0)}",
        "  a few metric lines:",
    ]
    shown = [
        line
        for line in metrics_text.splitlines()
        if line.startswith(("istio_requests_total{", "remixer_policy_checks_total{"))
    ]
    lines.extend("    " + line for line in shown[:6])
    return "\n".join(lines)


def run_demo(settings: Settings, *, requests: int = 60, keep_running: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="remixer-demo-") as tmp, demo_stack(settings, Path(tmp)) as stack:
        ports = stack["ports"]
        base = f"http://127.0.0.1:{ports['listen']}"
        admin_url = f"http://127.0.0.1:{ports['admin']}"
        codes = send_burst(base, requests)
        entries, metrics_text = wait_for_entries(admin_url, requests)
        raw = stack["envoy"].stats("http.ingress_http.ext_authz.")
        envoy_stats = {name.rsplit(".", 1)[1]: value for name, value in raw.items()}
        print(summary(codes, entries, metrics_text, envoy_stats))
        ok = sum(codes.values()) == requests and codes.get(403, 0) > 0 and entries >= requests
        if keep_running:
            token_file = Path(tmp) / "data" / "admin-token"
            print(
                "\nEverything is still running. Try:\n"
                f"  curl -i {base}/productpage\n"
                f"  curl -i {base}/admin/users\n"
                f"  curl -s {admin_url}/metrics | grep istio_requests_total\n"
                f"  curl -s {admin_url}/v1/rules\n"
                f"  curl -s -X POST {admin_url}/v1/evaluate -H 'content-type: application/json' "
                '-d \'{"method": "GET", "path": "/admin/x"}\'\n'
                f"  curl -s {admin_url}/readyz\n"
                "  # add a rule at runtime (writes need the admin token), then see /products/ denied:\n"
                f"  curl -s -X PUT {admin_url}/v1/rules/deny-products \\\n"
                "      -H 'content-type: application/json' \\\n"
                f'      -H "authorization: Bearer $(cat {token_file})" \\\n'
                '      -d \'{"id": "deny-products", "action": "deny",\n'
                '           "match": {"request.path": {"prefix": "/api/v1/products"}}}\'\n'
                f"  curl -i {base}/api/v1/products/1\n"
                "Press Ctrl-C to stop."
            )
            stop_signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
        if not ok:
            print("demo: expected allowed and denied requests and every access-log entry", file=sys.stderr)
            return 1
        return 0
