"""The Kafka side of shipping: one aiokafka producer, fed through its public batch API
(create_batch, append, close, send_batch). Every aiokafka / broker failure becomes `ShipFailed`; the
caller spools and reconnects later.

The public API takes records one call each; there is no public way to hand aiokafka a batch written
whole. What a compiled batch writer saved in place (19-32% of bench/als.py's entries per CPU-second) and
why it went anyway: remixer/kit/native/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from remixer.kit.parts import Record
from remixer.kit.shipping.settings import KafkaSettings

log = logging.getLogger("remixer.kit.shipping")


class ClientLogQuieter(logging.Filter):
    """While Kafka is away its client logs every failed connection attempt (hundreds of ERROR lines
    a minute); the shipper says it in one line of its own. This lets one client line through per
    `interval` and counts the rest, so the first error's detail is kept and the flood is not."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self.suppressed = 0
        self._passed = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        if now - self._passed >= self.interval:
            self._passed = now
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


_QUIETER = ClientLogQuieter()


def quiet_client_logs() -> ClientLogQuieter:
    """Install the process's one ClientLogQuieter on the root logger's handlers (where aiokafka's
    records end up: filters on a logger do not see its children's records)."""
    for handler in logging.getLogger().handlers:
        if _QUIETER not in handler.filters:
            handler.addFilter(_QUIETER)
    return _QUIETER


class ShipFailed(Exception):
    """Kafka did not take (or acknowledge) a batch in time; its records must be spooled."""


class KafkaLink:
    """A connected producer. `send(topic, records)` returns once every record is acknowledged."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._idempotence = settings.idempotence

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def _kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "bootstrap_servers": s.bootstrap_servers,
            "client_id": "remixer",
            "linger_ms": s.linger_ms,
            "max_batch_size": s.batch_max_bytes,
            "max_request_size": max(s.batch_max_bytes, s.max_record_bytes) + 4096,
            "request_timeout_ms": int(s.send_timeout_s * 1000),
            "compression_type": None if s.compression == "none" else s.compression,
            "security_protocol": s.security_protocol,
        }
        if s.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = create_ssl_context(
                cafile=str(s.ssl_cafile) if s.ssl_cafile else None,
                certfile=str(s.ssl_certfile) if s.ssl_certfile else None,
                keyfile=str(s.ssl_keyfile) if s.ssl_keyfile else None,
            )
        if s.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = s.sasl_mechanism
            kwargs["sasl_plain_username"] = s.sasl_username
            kwargs["sasl_plain_password"] = s.sasl_password.get_secret_value() if s.sasl_password else None
        return kwargs

    async def connect(self, topics: Sequence[str]) -> None:
        """Start a producer and learn the topics' partitions; raises ShipFailed when the broker is away."""
        timeout = self.settings.send_timeout_s
        try:
            await asyncio.wait_for(self._ensure_topics(topics), timeout)
            producer = await asyncio.wait_for(self._start_producer(), timeout)
            try:
                for topic in topics:
                    parts = await asyncio.wait_for(producer.partitions_for(topic), timeout)
                    self._partitions[topic] = sorted(parts)
            except BaseException:
                await self._stop(producer)
                raise
        except (KafkaError, OSError, TimeoutError) as exc:
            raise ShipFailed(f"cannot connect to Kafka {self.settings.bootstrap_servers}: {exc!r}") from None
        self._producer = producer

    async def _start_producer(self) -> AIOKafkaProducer:
        acks: Any = "all" if self.settings.acks == "all" else 1
        if self._idempotence:
            producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **self._kwargs())
            try:
                await producer.start()
                return producer
            except KafkaError as exc:
                # Brokers without InitProducerId: fall back to a plain producer, still acks=all.
                log.warning("Kafka idempotent producer unavailable (%r); using a plain producer", exc)
                self._idempotence = False
                await self._stop(producer)
        producer = AIOKafkaProducer(acks=acks, **self._kwargs())
        try:
            await producer.start()
        except BaseException:
            await self._stop(producer)
            raise
        return producer

    async def _ensure_topics(self, topics: Sequence[str]) -> None:
        if self.settings.security_protocol != "PLAINTEXT":
            return  # real clusters provision topics; auto-creation is a local convenience
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.bootstrap_servers, client_id="remixer-admin"
        )
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                count = self.settings.partitions or 1
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(t, count, 1) for t in missing])
        finally:
            await admin.close()

    async def _learn_topic(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        """A stream that appeared after connecting: make sure its topic exists and learn its partitions."""
        await asyncio.wait_for(self._ensure_topics([topic]), self.settings.send_timeout_s)
        parts = await asyncio.wait_for(producer.partitions_for(topic), self.settings.send_timeout_s)
        self._partitions[topic] = sorted(parts)
        return self._partitions[topic]

    async def send(self, topic: str, records: Sequence[Record]) -> None:
        producer = self._producer
        if producer is None:
            raise ShipFailed("not connected")
        partitions = self._partitions.get(topic)
        if not partitions:
            try:
                partitions = await self._learn_topic(producer, topic)
            except (KafkaError, OSError, TimeoutError) as exc:
                raise ShipFailed(f"Kafka topic {topic} unavailable: {exc!r}") from None
        if self.settings.partitions:
            partitions = partitions[: self.settings.partitions]
        by_partition: dict[int, list[Record]] = defaultdict(list)
        if len(partitions) == 1:
            by_partition[partitions[0]] = list(records)
        else:
            for record in records:
                key = record[0]
                index = self._partitioner(key, partitions, partitions) if key else partitions[0]
                by_partition[index].append(record)
        futures: list[asyncio.Future[Any]] = []
        try:
            for partition, chunk in by_partition.items():
                done = 0
                while done < len(chunk):
                    batch = producer.create_batch()
                    done = _fill(batch, chunk, done)
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
            # asyncio.wait, not wait_for(gather): a timeout leaves the batches' futures uncancelled,
            # so what becomes of them is still known after the producer is stopped.
            _, pending = await asyncio.wait(futures, timeout=self.settings.send_timeout_s)
            if pending:
                raise TimeoutError(f"{len(pending)} of {len(futures)} batches unacknowledged")
            for future in futures:
                future.result()  # a batch the broker refused raises its error
        except BaseException as exc:
            # Abandoned (a broker error, or close() cancelling the shipper): their late failures are
            # expected, not news. Unretrieved, each would be logged with a traceback whenever the GC
            # happens to collect it.
            for future in futures:
                future.add_done_callback(_retrieve)
            if not isinstance(exc, KafkaError | OSError | TimeoutError):
                raise
            # Stopping the producer flushes what it holds: a broker back within that time still takes
            # the batches. Acknowledged then, they are sent; spooled again, they would arrive twice.
            await self.disconnect()
            if not all(f.done() and not f.cancelled() and f.exception() is None for f in futures):
                raise ShipFailed(f"Kafka send to {topic} failed: {exc!r}") from None

    async def disconnect(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)

    @staticmethod
    async def _stop(producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 5)


def _fill(batch: Any, records: list[Record], start: int) -> int:
    """Append records[start:] to an empty batch until it is full, then close it (so the producer sends
    it now instead of lingering for more); returns the index of the first record left out. A batch
    always takes its first record (the hub drops any larger than the broker would accept)."""
    append = batch.append
    index = start
    for key, value in records[start:]:
        if append(key=key, value=value, timestamp=None) is None:
            break
        index += 1
    batch.close()
    return index


def quiet_abandoned_sends(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: a Kafka failure nobody retrieved is logged at debug.

    aiokafka fails a batch's internal futures when the broker goes away and leaves some of them
    unretrieved; asyncio would log each with a traceback whenever the GC collects it, long after the
    shipper has logged the outage and spooled the records. Everything else goes to asyncio's default.
    """
    error = context.get("exception")
    if context.get("message") == "Future exception was never retrieved" and isinstance(error, KafkaError):
        log.debug("an abandoned Kafka send failed: %r", error)
        return
    loop.default_exception_handler(context)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
