"""`remixer serve` as a real subprocess on free ports: what Envoy talks to in end-to-end tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from remixer.envoy import free_port
from remixer.serveproc import ServeProcess


class RemixerServer(ServeProcess):
    def __init__(self, workdir: Path, config: dict[str, Any], ports: dict[str, int]) -> None:
        super().__init__(
            workdir / "remixer.yaml", f"http://127.0.0.1:{ports['admin']}", workdir / "remixer.log"
        )
        self.workdir = workdir
        self.config = config
        self.grpc_port = ports["grpc"]
        self.http_authz_port = ports["http_authz"]
        self.admin_port = ports["admin"]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def data_dir(self) -> Path:
        return Path(self.config["server"]["data_dir"])

    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def start(self, *extra_args: str, wait: bool = True, timeout: float = 30.0) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        super().start(*extra_args, wait=wait, timeout=timeout)

    def metrics(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels`, read from /metrics."""
        return sum(
            sample.value
            for family in text_string_to_metric_families(self.metrics())
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


RemixerFactory = Callable[..., RemixerServer]


def remixer_config(workdir: Path, **sections: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    ports = {"grpc": free_port(), "http_authz": free_port(), "admin": free_port()}
    config: dict[str, Any] = {
        "server": {
            "grpc_address": f"127.0.0.1:{ports['grpc']}",
            "admin_address": f"127.0.0.1:{ports['admin']}",
            "data_dir": str(workdir / "data"),
            "drain_seconds": 0.5,
            "stop_grace_s": 1,
        },
        "policy": {"http_address": f"127.0.0.1:{ports['http_authz']}"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config, ports


@pytest.fixture
def remixer_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemixerFactory]:
    """remixer_factory(*serve_args, start=True, policy={...}, telemetry={...}) -> a RemixerServer."""
    started: list[RemixerServer] = []

    def make(*extra_args: str, start: bool = True, **sections: dict[str, Any]) -> RemixerServer:
        workdir = tmp_path_factory.mktemp("remixer")
        config, ports = remixer_config(workdir, **sections)
        server = RemixerServer(workdir, config, ports)
        started.append(server)
        if start:
            server.start(*extra_args)
        return server

    yield make
    for server in started:
        with contextlib.suppress(Exception):
            server.stop()
