"""Real Envoy 1.40 in front of the echo upstream, with remixer's policy as ext_authz (gRPC and HTTP
modes): allowed, denied with a custom status/body, rate-limited with 429 and headers, header
injection seen by the upstream, dry-run counted but not enforced, admin changes live without restart."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from remixer.kit.echo import EchoServer
from remixer.kit.envoy import (
    bootstrap,
    ext_authz_grpc_filter,
    ext_authz_http_filter,
    free_port,
    grpc_cluster,
    http_cluster,
    http_listener,
)
from tests.policy.conftest import POSTGRES_URL, REDIS_URL, PolicyFactory, RunningPolicy, eventually
from tests.realparts.envoy import EnvoyFactory

POLICY: dict[str, Any] = {
    "lists": [{"name": "banned-agents", "kind": "string", "entries": ["badbot/1.0"]}],
    "limits": [
        {
            "name": "search",
            "requests": 3,
            "unit": "minute",
            "algorithm": "sliding_window",
            "descriptor": ["request.headers.x-user"],
        }
    ],
    "rules": [
        {
            "id": "deny-admin",
            "action": "deny",
            "match": {"request.path": {"prefix": "/admin"}},
            "deny": {"status": 418, "body": "admin is closed\n", "headers": {"x-denied-by": "remixer"}},
        },
        {
            "id": "deny-bots",
            "action": "deny",
            "match": {"request.headers.user-agent": {"in_list": "banned-agents"}},
        },
        {
            "id": "dry-debug",
            "action": "deny",
            "dry_run": True,
            "match": {"request.headers.x-debug": {"present": True}},
        },
        {
            "id": "limit-search",
            "action": "rate_limit",
            "limit": "search",
            "match": {"request.path": {"prefix": "/search"}},
        },
        {
            "id": "tag-api",
            "action": "allow",
            "match": {"request.path": {"glob": "/api/**"}, "request.method": {"in": ["GET", "POST"]}},
            "allow": {"headers": {"x-remixer-tag": "api"}, "remove_headers": ["x-secret"]},
        },
    ],
}


def _envoy_config(run: RunningPolicy, echo: EchoServer, *, mode: str) -> tuple[dict[str, Any], int]:
    listen = free_port()
    if mode == "grpc":
        authz = ext_authz_grpc_filter("remixer_authz", timeout="2s")
        authz_cluster = grpc_cluster("remixer_authz", "127.0.0.1", run.grpc_port)
    else:
        authz = ext_authz_http_filter("remixer_authz", f"http://127.0.0.1:{run.http_port}", timeout="2s")
        authz_cluster = http_cluster("remixer_authz", "127.0.0.1", run.http_port)
    node = {
        "id": "sidecar~127.0.0.1~productpage-v1-abc.default~default.svc.cluster.local",
        "cluster": "productpage.default",
        "metadata": {"NAME": "productpage-v1-abc", "NAMESPACE": "default", "WORKLOAD_NAME": "productpage-v1"},
    }
    boot = bootstrap(
        admin_port=free_port(),
        node=node,
        listeners=[
            http_listener("ingress", listen, route_cluster="upstream", http_filters=[authz], access_log=[])
        ],
        clusters=[authz_cluster, http_cluster("upstream", "127.0.0.1", echo.port)],
    )
    return boot, listen


async def _scenario(run: RunningPolicy, envoy: Any, listen: int, *, mode: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listen}", timeout=10) as client:
        # Allowed by default, and the upstream sees what the allow rule injected / removed.
        plain = await client.get("/hello")
        assert plain.status_code == 200, plain.text
        tagged = await client.get("/api/items?x=1", headers={"x-secret": "s3cr3t"})
        assert tagged.status_code == 200
        seen = tagged.json()["headers"]
        assert seen["x-remixer-tag"] == "api"
        assert "x-secret" not in seen

        # Denied with the rule's status, body and header.
        denied = await client.get("/admin/users")
        assert denied.status_code == 418
        assert denied.text == "admin is closed\n"
        assert denied.headers["x-denied-by"] == "remixer"
        bot = await client.get("/hello", headers={"user-agent": "badbot/1.0"})
        assert bot.status_code == 403

        # Dry-run rule: the request passes, the match is counted.
        debug = await client.get("/hello", headers={"x-debug": "1"})
        assert debug.status_code == 200
        assert run.metric("remixer_policy_dry_run_matches_total", rule="dry-debug") == 1

        # Rate limit: 3 per minute per x-user; the 4th gets 429 with the ratelimit headers.
        codes = [(await client.get("/search?q=a", headers={"x-user": "ann"})).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        limited = await client.get("/search?q=a", headers={"x-user": "ann"})
        assert limited.status_code == 429
        assert limited.headers["x-ratelimit-limit"] == "3"
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        other_user = await client.get("/search?q=a", headers={"x-user": "bob"})
        assert other_user.status_code == 200

        # A policy change through the admin API reaches Envoy without a restart.
        change = await run.put(
            "rules",
            "deny-hello",
            {
                "action": "deny",
                "match": {"request.path": {"exact": "/hello"}},
                "deny": {"status": 451, "body": "gone"},
            },
        )
        assert change.status_code == 200, change.text
        after = await client.get("/hello")
        assert after.status_code == 451
        assert after.text == "gone"

    # Envoy's own counters are the independent witness.
    stats = envoy.stats("http.ingress_http.ext_authz")
    assert stats.get("http.ingress_http.ext_authz.denied", 0) >= 4
    assert stats.get("http.ingress_http.ext_authz.ok", 0) >= 6
    assert stats.get("http.ingress_http.ext_authz.error", 0) == 0
    assert run.metric("remixer_policy_checks_total", decision="rate_limited", rule="limit-search") == 1
    assert run.metric("remixer_policy_checks_total", decision="deny", rule="deny-admin") == 1
    decisions = run.sinks.sink("decisions").records
    await eventually(
        lambda: any(b'"rule":"deny-admin"' in value for _, value in decisions), what="decision log"
    )


@pytest.mark.parametrize("mode", ["grpc", "http"])
async def test_envoy_ext_authz_sqlite_memory(
    mode: str, policy_factory: PolicyFactory, envoy_factory: EnvoyFactory, echo_upstream: EchoServer
) -> None:
    run = await policy_factory(policy=POLICY)
    boot, listen = _envoy_config(run, echo_upstream, mode=mode)
    envoy = await asyncio.to_thread(envoy_factory, boot)
    await _scenario(run, envoy, listen, mode=mode)


async def test_envoy_ext_authz_postgres_redis(
    policy_factory: PolicyFactory,
    envoy_factory: EnvoyFactory,
    echo_upstream: EchoServer,
    pg_schema: str,
    redis_prefix: str,
) -> None:
    run = await policy_factory(
        policy=POLICY,
        database_url=POSTGRES_URL,
        database_schema=pg_schema,
        quota_backend="redis",
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
        redis_timeout=1.0,
    )
    boot, listen = _envoy_config(run, echo_upstream, mode="grpc")
    envoy = await asyncio.to_thread(envoy_factory, boot)
    await _scenario(run, envoy, listen, mode="grpc")
