"""Record sinks per stream, and the one shipper task that moves their records to Kafka or the spool.

Flow per stream: offer()/put() -> bounded in-memory queue -> shipper -> Kafka (acks) | spool on disk.
Order is kept: while a stream's spool holds records, new records queue behind them on disk, and the
spool is drained (oldest first) before the queue. Records are only dropped when the spool is full
(or a record is larger than the broker accepts); each drop is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from operator import itemgetter
from pathlib import Path

from remixer.kit.parts import Record
from remixer.kit.shipping.kafka import ClientLogQuieter, KafkaLink, ShipFailed, quiet_client_logs
from remixer.kit.shipping.localfiles import RecordFiles
from remixer.kit.shipping.metrics import ShippingMetrics
from remixer.kit.shipping.settings import ShippingSettings
from remixer.kit.shipping.spool import Spool

log = logging.getLogger("remixer.kit.shipping")

KNOWN_STREAMS = {"access-logs": "access_logs", "decisions": "decisions"}
_VALUE = itemgetter(1)
_KEY_ALLOWANCE = 1024
OUTAGE_REMINDER_S = 60.0


class StreamQueue:
    """The RecordSink of one stream (one Kafka topic)."""

    def __init__(self, name: str, topic: str, *, spool: Spool | RecordFiles, hub: ShippingHub) -> None:
        self.name = name
        self.topic = topic
        self.spool = spool
        self.queue: deque[Record] = deque()
        self._hub = hub
        self._space = asyncio.Event()
        self._space.set()
        self._metrics = hub.metrics.for_stream(name)

    def _admit(self, records: Sequence[Record]) -> Sequence[Record]:
        limit = self._hub.settings.kafka.max_record_bytes
        # Fast path at C speed: keys are short (a service name), so check the values with room to spare.
        if not records or max(map(len, map(_VALUE, records))) + _KEY_ALLOWANCE <= limit:
            return records
        kept = [r for r in records if len(r[1]) + (len(r[0]) if r[0] else 0) <= limit]
        self._metrics.dropped("too_large", len(records) - len(kept))
        return kept

    def offer(self, records: Sequence[Record]) -> int:
        """Queue without waiting; overflow goes to the spool; returns how many were kept."""
        records = self._admit(records)
        self._hub.ensure_running()
        if len(self.queue) + len(records) <= self._hub.settings.queue_max_records:
            self.queue.extend(records)
            self._after_enqueue()
            return len(records)
        # Overflow: everything queued goes to disk first so the order stays oldest-first.
        self.spill()
        kept = self.to_spool(records)
        self._hub.wake()
        return kept

    async def put(self, records: Sequence[Record]) -> None:
        """Queue, waiting while the queue is full (the caller's backpressure)."""
        records = self._admit(records)
        self._hub.ensure_running()
        while len(self.queue) >= self._hub.settings.queue_max_records and not self._hub.closing:
            self._space.clear()
            self._hub.wake()
            try:
                await self._space.wait()
            except asyncio.CancelledError:
                # The caller is cancelled (the drain's end) with records it already read: keep them.
                self.to_spool(records)
                raise
        if self._hub.closing:
            self.to_spool(records)
            return
        self.queue.extend(records)
        self._after_enqueue()

    def _after_enqueue(self) -> None:
        if len(self.queue) >= self._hub.settings.queue_max_records:
            self._space.clear()
        self._hub.wake()

    def take(self, count: int) -> list[Record]:
        queue = self.queue
        if count >= len(queue):
            taken = list(queue)
            queue.clear()
        else:
            taken = [queue.popleft() for _ in range(count)]
        self._space.set()
        return taken

    def to_spool(self, records: Sequence[Record]) -> int:
        written = self.spool.append(records)
        if written:
            if isinstance(self.spool, RecordFiles):
                self._metrics.stored(written)
            else:
                self._metrics.spooled(written)
        if written < len(records):
            self._metrics.dropped("spool_full", len(records) - written)
        return written

    def spill(self) -> None:
        if self.queue:
            self.to_spool(self.take(len(self.queue)))

    def release_waiters(self) -> None:
        self._space.set()


class ShippingHub:
    """`RecordSinks` for remixer serve: `sink(stream)`, and `close()` on shutdown."""

    def __init__(
        self, settings: ShippingSettings, *, spool_dir: Path, records_dir: Path, metrics: ShippingMetrics
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.spool_dir = spool_dir
        self.records_dir = records_dir
        self.closing = False
        self._streams: dict[str, StreamQueue] = {}
        self._link = KafkaLink(settings.kafka) if settings.kafka.enabled else None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_connect = 0.0
        self._outage_since: float | None = None
        self._outage_logged = 0.0
        self._quieter = quiet_client_logs() if self._link is not None else ClientLogQuieter()
        metrics.watch(self)

    # ---- RecordSinks ----------------------------------------------------------------------------

    def sink(self, stream: str) -> StreamQueue:
        queue = self._streams.get(stream)
        if queue is None:
            topics = self.settings.kafka.topics
            topic = getattr(topics, KNOWN_STREAMS[stream]) if stream in KNOWN_STREAMS else f"remixer-{stream}"
            spool: Spool | RecordFiles
            if self._link is None:
                metrics = self.metrics.for_stream(stream)
                spool = RecordFiles(
                    self.records_dir / stream,
                    file_bytes=self.settings.records_file_bytes,
                    max_bytes=self.settings.records_max_bytes,
                    retention_s=self.settings.records_retention_hours * 3600,
                    on_drop=lambda count, metrics=metrics: metrics.dropped("retention", count),  # type: ignore[misc]
                )
            else:
                spool = Spool(
                    self.spool_dir / stream,
                    max_bytes=self.settings.spool_max_bytes,
                    segment_bytes=self.settings.spool_segment_bytes,
                )
            queue = self._streams[stream] = StreamQueue(stream, topic, spool=spool, hub=self)
        return queue

    @property
    def streams(self) -> list[StreamQueue]:
        return list(self._streams.values())

    @property
    def kafka_connected(self) -> bool:
        return self._link is not None and self._link.connected

    # ---- the shipper ------------------------------------------------------------------------------

    def start(self) -> None:
        """Ship what an earlier run left in the spool now, not when the first new record arrives.
        Kafka off: say where records are kept and what happens at the bound."""
        if self._link is None:
            s = self.settings
            log.info(
                "Kafka is off: records are kept in %s/<stream>/ (*.jsonl: one JSON record a line; *.binpb: "
                "length-delimited protobuf; `remixer records DIR` prints both), a new file every %.3g MiB; "
                "files older than %gh or beyond %.3g MiB per stream are deleted, their records counted in "
                'remixer_shipping_records_dropped_total{reason="retention"}',
                self.records_dir,
                s.records_file_bytes / (1 << 20),
                s.records_retention_hours,
                s.records_max_bytes / (1 << 20),
            )
            return
        if self.spool_dir.is_dir():
            for directory in sorted(self.spool_dir.iterdir()):
                if directory.is_dir() and any(directory.glob("*.seg")):
                    self.sink(directory.name)
        if any(not stream.spool.empty for stream in self.streams):
            self.ensure_running()
            self.wake()

    def ensure_running(self) -> None:
        if self._task is None and not self.closing:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # offered from outside the event loop: the next call from inside starts it
                return
            self._task = loop.create_task(self._run(), name="remixer-shipper")

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        linger = self.settings.kafka.linger_ms / 1000
        while True:
            timeout = self.settings.kafka.retry_backoff_s if not self.kafka_connected else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if linger and not self.closing and self.kafka_connected:
                # Let a batch fill unless one is already full.
                limit = self.settings.kafka.batch_max_records
                if all(len(s.queue) < limit for s in self._streams.values()):
                    await asyncio.sleep(linger)
            try:
                await self._ship_all()
            except Exception:  # the shipper must never die: log, spool, go on
                log.exception("shipper error; records kept in the spool")
                for stream in self.streams:
                    stream.spill()
            if self.closing:
                return

    async def _ship_all(self) -> None:
        if self._link is not None and not self._link.connected:
            await self._try_connect()
        failed = False
        for stream in self.streams:
            if self._link is None or not self._link.connected:
                if failed and self._pending(stream):
                    self.metrics.for_stream(stream.name).send_error()  # its send failed with the link
                stream.spill()
                continue
            try:
                await self._ship(stream, self._link)
            except ShipFailed as exc:
                failed = True
                self._outage(f"send to topic {stream.topic} failed: {exc}")
                stream.spill()
                self.metrics.for_stream(stream.name).send_error()
                await self._link.disconnect()
                self._next_connect = time.monotonic() + self.settings.kafka.retry_backoff_s

    @staticmethod
    def _pending(stream: StreamQueue) -> bool:
        return bool(stream.queue) or not stream.spool.empty

    async def _try_connect(self) -> None:
        assert self._link is not None
        if time.monotonic() < self._next_connect and not self.closing:
            return
        try:
            await self._link.connect([s.topic for s in self.streams])
        except ShipFailed as exc:
            self._outage(str(exc))
            for stream in self.streams:
                if self._pending(stream):
                    self.metrics.for_stream(stream.name).send_error()
            self._next_connect = time.monotonic() + self.settings.kafka.retry_backoff_s
            return
        if self._outage_since is None:
            log.info("Kafka connected: %s", ",".join(self.settings.kafka.bootstrap_servers))
        else:
            log.warning(
                "Kafka reachable again after %.1fs; the spool drains now (%d Kafka-client log lines "
                "suppressed meanwhile)",
                time.monotonic() - self._outage_since,
                self._quieter.take_suppressed(),
            )
        self._outage_since = None

    def _outage(self, reason: str) -> None:
        """One line when an outage starts and one a minute while it lasts, however often the shipper
        retries (the Kafka client's own lines are thinned by `self._quieter`)."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = self._outage_logged = now
            log.warning(
                "Kafka unavailable (%s); records go to the spool, retrying every %.1fs",
                reason,
                self.settings.kafka.retry_backoff_s,
            )
        elif now - self._outage_logged >= OUTAGE_REMINDER_S:
            self._outage_logged = now
            log.warning(
                "Kafka still unavailable after %.0fs (%s); spool holds %d bytes",
                now - self._outage_since,
                reason,
                sum(s.spool.size_bytes for s in self.streams),
            )

    async def _ship(self, stream: StreamQueue, link: KafkaLink) -> None:
        kafka = self.settings.kafka
        metrics = self.metrics.for_stream(stream.name)
        spool = stream.spool
        assert isinstance(spool, Spool)  # Kafka on: a spool, never record files
        # The spool holds older records than the queue: drain it first, queueing new arrivals behind it.
        while not spool.empty:
            if len(stream.queue) >= kafka.batch_max_records:
                stream.spill()
            records, cursor = spool.read(max_records=kafka.batch_max_records, max_bytes=kafka.batch_max_bytes)
            if not records:
                break
            started = time.perf_counter()
            await link.send(stream.topic, records)
            metrics.sent(len(records), time.perf_counter() - started)
            spool.commit(cursor)
        while stream.queue:
            records = stream.take(kafka.batch_max_records)
            started = time.perf_counter()
            try:
                await link.send(stream.topic, records)
            except (ShipFailed, asyncio.CancelledError):
                # Not acknowledged (or close() ran out of time): keep them, ahead of what is still queued.
                stream.to_spool(records)
                raise
            metrics.sent(len(records), time.perf_counter() - started)

    async def close(self) -> None:
        """Flush to Kafka what can be flushed quickly, spool the rest; then stop. The SIGTERM path."""
        self.closing = True
        for stream in self.streams:
            stream.release_waiters()
        self.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.settings.kafka.send_timeout_s + 5)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        elif self._link is not None:
            with contextlib.suppress(Exception):
                await self._ship_all()
        for stream in self.streams:
            stream.spill()
            stream.spool.close()
        if self._link is not None:
            await self._link.disconnect()
