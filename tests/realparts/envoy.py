"""Envoy fixtures: `envoy_factory(bootstrap_dict)` starts a real Envoy 1.40 and stops it at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from remixer.kit import envoy
from remixer.kit.echo import EchoServer
from remixer.kit.envoy import EnvoyProcess

EnvoyFactory = Callable[..., EnvoyProcess]


@pytest.fixture
def envoy_factory() -> Iterator[EnvoyFactory]:
    started: list[EnvoyProcess] = []

    def start(boot: dict[str, Any], **kwargs: Any) -> EnvoyProcess:
        proc = EnvoyProcess(boot, **kwargs).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.__exit__(None, None, None)


@pytest.fixture
def echo_upstream() -> Iterator[EchoServer]:
    """An HTTP upstream that answers with the request's headers as JSON."""
    with EchoServer() as server:
        yield server


def ingress(
    *,
    admin: int,
    listen: int,
    upstream: int,
    clusters: list[dict[str, Any]],
    http_filters: list[dict[str, Any]] | None = None,
    access_log: list[dict[str, Any]] | None = None,
    route_cluster: str = "upstream",
    node: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A bootstrap with one ingress listener on `listen` routing everything to the HTTP upstream on
    `upstream` (cluster `route_cluster`), with remixer's `clusters` beside it."""
    return envoy.bootstrap(
        admin_port=admin,
        listeners=[
            envoy.http_listener(
                "ingress",
                listen,
                route_cluster=route_cluster,
                http_filters=http_filters or [],
                access_log=access_log or [],
            )
        ],
        clusters=[*clusters, envoy.http_cluster(route_cluster, "127.0.0.1", upstream)],
        node=node,
    )
