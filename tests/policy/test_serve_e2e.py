"""`remixer serve` as a subprocess hosting the policy part, with Envoy in HTTP ext_authz mode in front:
the settings, listeners, admin API (real HTTP, bearer token), /readyz and /metrics as a user sees them."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import yaml

from remixer.kit.echo import EchoServer
from remixer.kit.envoy import bootstrap, ext_authz_http_filter, free_port, http_cluster, http_listener
from tests.policy.test_envoy_e2e import POLICY
from tests.realparts.envoy import EnvoyFactory
from tests.realparts.remixer import RemixerFactory


def test_remixer_serve_http_mode_with_admin_changes(
    remixer_factory: RemixerFactory, envoy_factory: EnvoyFactory, echo_upstream: EchoServer, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(POLICY))
    server = remixer_factory(
        server={"parts": ["policy", "admin"]},
        policy={"policy_files": [str(policy_file)], "reload_interval": 0.2},
    )
    listen = free_port()
    authz = ext_authz_http_filter("authz", f"http://127.0.0.1:{server.http_authz_port}", timeout="2s")
    envoy = envoy_factory(
        bootstrap(
            admin_port=free_port(),
            listeners=[http_listener("in", listen, route_cluster="up", http_filters=[authz], access_log=[])],
            clusters=[
                http_cluster("authz", "127.0.0.1", server.http_authz_port),
                http_cluster("up", "127.0.0.1", echo_upstream.port),
            ],
        )
    )
    base = f"http://127.0.0.1:{listen}"
    assert httpx.get(base + "/api/x").json()["headers"]["x-remixer-tag"] == "api"
    denied = httpx.get(base + "/admin")
    assert (denied.status_code, denied.text) == (418, "admin is closed\n")

    admin = server.admin_url
    body = {"action": "deny", "match": {"request.path": {"prefix": "/api"}}, "deny": {"status": 409}}
    assert httpx.put(admin + "/v1/rules/close-api", json=body).status_code == 401
    token = {"authorization": f"Bearer {server.admin_token()}"}
    assert httpx.put(admin + "/v1/rules/close-api", json=body, headers=token).status_code == 200
    assert httpx.get(base + "/api/x").status_code == 409

    ready = httpx.get(admin + "/readyz")
    assert ready.status_code == 200
    assert "policy: ok" in ready.text
    metrics = server.metrics()
    assert 'remixer_policy_checks_total{decision="deny",rule="close-api"} 1.0' in metrics
    assert "remixer_policy_store_staleness_seconds" in metrics
    assert envoy.stats("http.ingress_http.ext_authz")["http.ingress_http.ext_authz.denied"] == 2
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10
