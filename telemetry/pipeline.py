"""Applies decoded batches: aggregates once per batch, hands records to shipping (awaiting = backpressure),
and buffers call edges that a background task upserts in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from remixer.kit.parts import RecordSink
from telemetry.adapters.prometheus import TelemetryStats
from telemetry.core.aggregates import Aggregates
from telemetry.core.kinds import batch_misses_and_edges
from telemetry.edge.decoding import BatchResult
from telemetry.structs import CallEdgeKey, EdgeCounts

log = logging.getLogger("telemetry.pipeline")


class CallEdgeStore(Protocol):
    async def upsert(self, edges: Mapping[CallEdgeKey, EdgeCounts]) -> int: ...

    async def close(self) -> None: ...


class TelemetryPipeline:
    def __init__(
        self,
        *,
        aggregates: Aggregates,
        stats: TelemetryStats,
        sink: RecordSink | None,
        edge_store: CallEdgeStore | None,
        edge_flush_s: float,
        now: Callable[[], datetime],
    ) -> None:
        self.aggregates = aggregates
        self._stats = stats
        self._sink = sink
        self._edge_store = edge_store
        self._edge_flush_s = edge_flush_s
        self._now = now
        self._edges: dict[CallEdgeKey, EdgeCounts] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._received = {
            "http": stats.entries_received.labels("http"),
            "tcp": stats.entries_received.labels("tcp"),
        }
        self.open_streams = 0

    # ---- BatchConsumer (called by the servicer) ----------------------------------------------------

    async def accept(self, batch: BatchResult) -> None:
        if not batch.entries:
            return
        self._received[batch.kind].inc(batch.entries)
        self._stats.batch_entries.observe(batch.entries)
        # The running totals were already updated through each kind's slot; what is left per batch:
        # label misses and call edges, summed over the batch's kinds by the core.
        misses, edges = batch_misses_and_edges(batch.counts)
        for label, count in misses.items():
            self._stats.miss(label, count)
        if edges and self._edge_store is not None:
            now = self._now()
            for key, count in edges.items():
                seen = self._edges.get(key)
                if seen is None:
                    self._edges[key] = EdgeCounts(count, now, now)
                else:
                    seen.count += count
                    seen.last_seen = now
        if batch.records and self._sink is not None:
            await self._sink.put(batch.records)
            self._stats.records_exported.inc(len(batch.records))

    def malformed(self, reason: str) -> None:
        self._stats.messages_malformed.labels(reason).inc()

    def stream_opened(self) -> None:
        self.open_streams += 1
        self._stats.streams.inc()

    def stream_closed(self) -> None:
        self.open_streams -= 1
        self._stats.streams.dec()

    # ---- call-edge flushing ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._edge_store is not None and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="telemetry-call-edges")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._edge_flush_s)
            await self.flush_edges()

    async def flush_edges(self) -> None:
        if not self._edges or self._edge_store is None:
            return
        pending, self._edges = self._edges, {}
        try:
            written = await self._edge_store.upsert(pending)
        except Exception as exc:  # keep the counts and retry on the next flush
            log.warning("call-edge flush failed, will retry: %s", exc)
            self._stats.edge_errors.inc()
            for key, counts in pending.items():
                seen = self._edges.get(key)
                if seen is None:
                    self._edges[key] = counts
                else:
                    seen.count += counts.count
                    seen.first_seen = min(seen.first_seen, counts.first_seen)
            return
        self._stats.edges_written.inc(written)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush_edges()
        if self._edge_store is not None:
            await self._edge_store.close()
