"""Envoy fixtures: `envoy_factory(bootstrap_dict)` starts a real Envoy 1.40 and stops it at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from remixer.echo import EchoServer
from remixer.envoy import EnvoyProcess

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
