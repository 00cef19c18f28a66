"""`remixer serve` as a real subprocess on free ports: what Envoy talks to in end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from remixer.envoy import free_port


@dataclass
class RemixerServer:
    workdir: Path
    config: dict[str, Any]
    grpc_port: int
    http_authz_port: int
    admin_port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "remixer.log"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def data_dir(self) -> Path:
        return Path(self.config["server"]["data_dir"])

    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def start(self, *extra_args: str, wait: bool = True, timeout: float = 30.0) -> RemixerServer:
        path = self.workdir / "remixer.yaml"
        path.write_text(yaml.safe_dump(self.config))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "remixer", "serve", "--config", str(path), *extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"remixer exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.admin_url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"remixer not ready in {timeout}s:\n{self.log()}")

    def metrics(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=5).text

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
        return int(proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


RemixerFactory = Callable[..., RemixerServer]


def remixer_config(workdir: Path, **sections: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    ports = {"grpc": free_port(), "http_authz": free_port(), "admin": free_port()}
    config: dict[str, Any] = {
        "server": {
            "grpc_address": f"127.0.0.1:{ports['grpc']}",
            "admin_address": f"127.0.0.1:{ports['admin']}",
            "data_dir": str(workdir / "data"),
            "drain_seconds": 2,
        },
        "policy": {"http_address": f"127.0.0.1:{ports['http_authz']}"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config, ports


@pytest.fixture
def remixer_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemixerFactory]:
    """remixer_factory(policy={...}, telemetry={...}, start=True) -> a running RemixerServer."""
    started: list[RemixerServer] = []

    def make(*extra_args: str, start: bool = True, **sections: dict[str, Any]) -> RemixerServer:
        workdir = tmp_path_factory.mktemp("remixer")
        config, ports = remixer_config(workdir, **sections)
        server = RemixerServer(workdir, config, ports["grpc"], ports["http_authz"], ports["admin"])
        started.append(server)
        if start:
            server.start(*extra_args)
        return server

    yield make
    for server in started:
        with contextlib.suppress(Exception):
            server.stop()
