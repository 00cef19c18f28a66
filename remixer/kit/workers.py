"""`--workers N`: every worker's metrics on worker 0's /metrics.

Each worker keeps its own registry (its own traffic's Istio metrics, checks, shipping). Workers 1..N-1
answer a connection on their Unix socket DATA_DIR/workers/metrics-<i>.sock with their exposition;
worker 0's /metrics reads them all and merges (remixer.kit.exposition.merge_workers). A worker that
does not answer in time is left out, logged and counted in remixer_workers_unanswered_total.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from remixer.kit.exposition import merge_workers, render

log = logging.getLogger("remixer.kit.workers")

FETCH_TIMEOUT_S = 5.0


def metrics_socket(data_dir: Path, index: int) -> Path:
    return data_dir / "workers" / f"metrics-{index}.sock"


def _fresh(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by an earlier run
    return str(path)


async def serve_metrics(registry: CollectorRegistry, path: Path) -> asyncio.Server:
    """Answer every connection on `path` with this worker's exposition, then close it."""
    where = _fresh(path)

    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(render(registry))
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_unix_server(answer, path=where)


def read_metrics(path: Path, timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """One worker's exposition (blocking: /metrics runs in uvicorn's thread pool)."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
    return b"".join(chunks)


def all_workers_metrics(registry: CollectorRegistry, data_dir: Path, workers: int) -> Callable[[], bytes]:
    """Worker 0's /metrics body: its own exposition merged with every other worker's."""
    unanswered = Counter(
        "remixer_workers_unanswered",
        "Scrapes in which a worker did not answer worker 0 (its series were left out).",
        ["worker"],
        registry=registry,
    )

    def exposition() -> bytes:
        texts = [("0", render(registry))]
        for index in range(1, workers):
            try:
                texts.append((str(index), read_metrics(metrics_socket(data_dir, index))))
            except OSError as exc:
                unanswered.labels(str(index)).inc()
                log.warning("worker %d did not answer for /metrics: %s", index, exc)
        return merge_workers(texts)

    return exposition
