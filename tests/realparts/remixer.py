"""`remixer serve` as a real subprocess on free ports: what Envoy talks to in end-to-end tests."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from remixer.kit.envoy import free_port
from remixer.kit.serveproc import ServeFailed, ServeProcess
from tests.realparts.ports import family, listens_on

PORT_NAMES = ("grpc", "http_authz", "admin")


class RemixerServer(ServeProcess):
    def __init__(self, workdir: Path, config: dict[str, Any], ports: dict[str, int]) -> None:
        super().__init__(
            workdir / "remixer.yaml", f"http://127.0.0.1:{ports['admin']}", workdir / "remixer.log"
        )
        self.workdir = workdir
        self.config = config
        self.started_once = False
        self.grpc_port, self.http_authz_port, self.admin_port = (ports[k] for k in PORT_NAMES)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def data_dir(self) -> Path:
        return Path(self.config["server"]["data_dir"])

    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def start(self, *extra_args: str, wait: bool = True, timeout: float = 30.0) -> None:
        # The ports were free when chosen, but another process on the machine may bind one before remixer
        # does: a first start that finds a port taken starts again on fresh ones (a restart keeps its
        # ports, which peers already point at).
        for attempt in range(5):
            self.config_path.write_text(yaml.safe_dump(self.config))
            try:
                super().start(*extra_args, wait=wait, timeout=timeout)
                self.started_once = True
                return
            except ServeFailed:
                if (
                    self.started_once
                    or attempt == 4
                    or not self.on_own_ports()
                    or "already in use" not in self.log_tail()
                ):
                    raise
            self.log_path.rename(self.log_path.with_suffix(f".port-taken-{attempt}.log"))
            self.use_ports(fresh_ports())

    def wait_ready(self, timeout: float = 30.0) -> None:
        super().wait_ready(timeout)
        # /readyz answered: from this remixer, or from whoever bound the admin port first?
        deadline = time.monotonic() + timeout
        while not (self.proc and any(listens_on(pid, self.admin_port) for pid in family(self.proc.pid))):
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise ServeFailed(f"remixer serve does not hold its admin port:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop_now(self) -> None:
        """At a test's end: SIGINT skips the drain (there is no Envoy left to hand over to), then stop()."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.stop()

    def addresses(self) -> tuple[str, str, str]:
        return (
            self.config["server"]["grpc_address"],
            self.config["server"]["admin_address"],
            self.config["policy"]["http_address"],
        )

    def on_own_ports(self) -> bool:
        """True unless the test set an address itself (e.g. one it holds on purpose)."""
        own = (self.grpc_port, self.admin_port, self.http_authz_port)
        return self.addresses() == tuple(f"127.0.0.1:{port}" for port in own)

    def use_ports(self, ports: dict[str, int]) -> None:
        self.grpc_port, self.http_authz_port, self.admin_port = (ports[k] for k in PORT_NAMES)
        self.admin_url = f"http://127.0.0.1:{ports['admin']}"
        self.config["server"]["grpc_address"] = f"127.0.0.1:{ports['grpc']}"
        self.config["server"]["admin_address"] = f"127.0.0.1:{ports['admin']}"
        self.config["policy"]["http_address"] = f"127.0.0.1:{ports['http_authz']}"

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


def fresh_ports() -> dict[str, int]:
    return {name: free_port() for name in PORT_NAMES}


def remixer_config(workdir: Path, **sections: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    ports = fresh_ports()
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
            server.stop_now()
