"""The StreamAccessLogs servicer: bytes off the wire -> BatchResult -> the consumer, one message at a time.

Both ends are wired in by the runtime: each stream's reader comes from a ReaderSetup (decoding.py), and
each batch goes to a BatchConsumer (the pipeline, which hands metrics, records and call edges to the
adapters).

Registered with raw-bytes handlers so a garbage message is answered with INVALID_ARGUMENT (and counted)
instead of a generic deserialization failure, and so the reader scans the bytes itself (decoding.py):
only a stream's first message is parsed with upb, for its identifier. Backpressure: the servicer awaits
the pipeline before reading the next message, so a slow Kafka or spool stops the stream rather than
growing memory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from envoy.service.accesslog.v3 import als_pb2

from telemetry.edge import decoding

SERVICE_NAME = "envoy.service.accesslog.v3.AccessLogService"
log = logging.getLogger("telemetry.als")


class BatchConsumer(Protocol):
    async def accept(self, batch: decoding.BatchResult) -> None: ...

    def malformed(self, reason: str) -> None: ...

    def stream_opened(self) -> None: ...

    def stream_closed(self) -> None: ...


class AccessLogServicer:
    def __init__(
        self, *, consumer: BatchConsumer, readers: decoding.ReaderSetup, max_entries: int = 1 << 62
    ) -> None:
        self._consumer = consumer
        self._readers = readers
        self._max_entries = max_entries
        self._handing_over = False

    def hand_over(self) -> None:
        """End every stream right after its next message (and new streams after their first).

        Envoy's gRPC access logger resets its stream when the server closes it and opens a new one,
        through its load balancer, at its next flush (envoyproxy/envoy
        source/extensions/access_loggers/common/grpc_access_logger_clients.h, onRemoteClose): with this
        replica reported NOT_SERVING, to another replica. Entries written on the old stream but not yet
        read would be lost; right after a message is the quietest moment, as Envoy flushes on a timer
        (buffer_flush_interval) or a full buffer (buffer_size_bytes), not continuously."""
        self._handing_over = True

    async def stream_access_logs(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> als_pb2.StreamAccessLogsResponse:
        consumer = self._consumer
        consumer.stream_opened()
        try:
            reader: decoding.StreamReader | None = None
            async for data in requests:
                if len(data) > 2 * self._max_entries:
                    await self._refuse_if_too_many(data, context)
                if reader is None:
                    reader = await self._open(data, context)
                try:
                    batch = reader.read_bytes(data)
                except decoding.MalformedMessage as exc:
                    consumer.malformed("undecodable")
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                await consumer.accept(batch)
                if self._handing_over:
                    break
        finally:
            consumer.stream_closed()
        return als_pb2.StreamAccessLogsResponse()

    async def _refuse_if_too_many(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Refuse a message of more than max_entries entries before reading any: Envoy sends about
        buffer_size_bytes (16 KiB) a message, tens of entries; 50,000 would be a hostile sender's."""
        try:
            entries = decoding.count_entries(data)
        except decoding.MalformedMessage:
            return  # the reader refuses it, with the reason
        if entries > self._max_entries:
            self._consumer.malformed("too_many_entries")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a message of {entries} entries is more than telemetry.max_entries_per_message "
                f"({self._max_entries})",
            )

    async def _open(self, first: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> decoding.StreamReader:
        """The stream's reader, for the identity in its first message (parsed once with upb)."""
        consumer = self._consumer
        try:
            message = decoding.parse_message(first)
        except decoding.MalformedMessage as exc:
            consumer.malformed("undecodable")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not message.identifier:
            consumer.malformed("no_identifier")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first StreamAccessLogsMessage of a stream must carry the identifier",
            )
        try:
            identity = decoding.stream_identity(message.identifier)
        except decoding.MalformedMessage as exc:
            consumer.malformed("undecodable")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return self._readers.open(identity)

    def register(self, server: grpc.aio.Server) -> list[str]:
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                    self.stream_access_logs,
                    request_deserializer=None,
                    response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        return [SERVICE_NAME]
