"""Prometheus fixtures: the real Debian Prometheus on a free port with a temporary TSDB.

`prometheus_factory(openmetrics=..., scrape_targets=[...])` backfills OpenMetrics text with
`promtool tsdb create-blocks-from openmetrics` before starting, and/or scrapes live targets.
`openmetrics_text(series)` writes such text with label values escaped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from remixer.kit.envoy import free_port
from tests.realparts.ports import listens_on

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# (metric name, labels, [(unix seconds, value), ...])
Series = tuple[str, Mapping[str, str], Sequence[tuple[float, float]]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def openmetrics_text(series: Iterable[Series]) -> str:
    """OpenMetrics exposition with timestamps, series of one name kept together, ending in # EOF."""
    lines = []
    for name, labels, samples in sorted(series, key=lambda s: (s[0], sorted(s[1].items()))):
        label_text = ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(labels.items()))
        for timestamp, value in sorted(samples):
            lines.append(f"{name}{{{label_text}}} {value:g} {timestamp:.3f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def backfill(text: str, data_dir: Path) -> None:
    source = data_dir.parent / f"{data_dir.name}.om"
    source.write_text(text, encoding="utf-8")
    data_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    source.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"promtool backfill failed: {done.stderr[-2000:]}")


@dataclass
class PrometheusServer:
    root: Path
    scrape_targets: Sequence[str] = ()
    scrape_interval: str = "1s"
    extra_args: Sequence[str] = ()
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "tsdb"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        config: dict[str, object] = {"global": {"scrape_interval": self.scrape_interval}}
        if self.scrape_targets:
            config["scrape_configs"] = [
                {
                    "job_name": "remixer",
                    "scrape_interval": self.scrape_interval,
                    "static_configs": [{"targets": list(self.scrape_targets)}],
                }
            ]
        config_path = self.root / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = self.root / "prometheus.log"
        # The port was free when chosen; another process may bind it before Prometheus does: then again
        # on a fresh one.
        for _ in range(5):
            self.port = free_port()
            if self._run(config_path, timeout):
                return self
        raise RuntimeError(f"prometheus found no free port: {self.log_path.read_text()[-2000:]}")

    def _run(self, config_path: Path, timeout: float) -> bool:
        """Start on self.port and wait until ready: False when the port was taken meanwhile."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.data_dir}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=30d",
                    "--web.enable-lifecycle",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "GOMAXPROCS": "2"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_text = self.log_path.read_text()
                if "address already in use" in log_text:
                    return False
                raise RuntimeError(f"prometheus exited: {log_text[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    # Ready, and it is ours: whoever took the port first would answer too.
                    if response.status == 200 and listens_on(self.process.pid, self.port):
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready in {timeout}s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


PrometheusFactory = Callable[..., PrometheusServer]


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    started: list[PrometheusServer] = []

    def start(
        *,
        openmetrics: str | None = None,
        scrape_targets: Sequence[str] = (),
        scrape_interval: str = "1s",
        extra_args: Sequence[str] = (),
    ) -> PrometheusServer:
        root = tmp_path / f"prometheus-{len(started)}"
        root.mkdir()
        server = PrometheusServer(
            root, scrape_targets=scrape_targets, scrape_interval=scrape_interval, extra_args=extra_args
        )
        if openmetrics is not None:
            backfill(openmetrics, server.data_dir)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
