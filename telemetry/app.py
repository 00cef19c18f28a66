"""Composition root of the telemetry card: settings + context -> a Part that `remixer serve` hosts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from remixer.kit.parts import Part, PartContext, Readiness
from telemetry.adapters import edges as edge_sql
from telemetry.adapters import migrating
from telemetry.adapters.prometheus import IstioCollector, TelemetryStats
from telemetry.core.aggregates import Aggregates
from telemetry.core.kinds import KindBook
from telemetry.core.labels import LabelPolicy
from telemetry.core.paths import PathTemplates
from telemetry.core.records import RecordEncoder
from telemetry.edge import decoding, wire
from telemetry.edge.als import AccessLogServicer
from telemetry.pipeline import TelemetryPipeline
from telemetry.settings import TelemetrySettings
from telemetry.structs import LABEL_NAMES, TCP_LABEL_NAMES

log = logging.getLogger("telemetry")


def _now() -> datetime:
    return datetime.now(UTC)


class TelemetryPart:
    name = "telemetry"

    def __init__(self, settings: TelemetrySettings, context: PartContext) -> None:
        self.settings = settings
        registry: CollectorRegistry = context.registry
        http_names = [*LABEL_NAMES, "request_path"] if settings.request_path_label else list(LABEL_NAMES)
        rewrites = [(r.label, r.pattern, r.replacement) for r in settings.label_rewrites]
        http_policy = LabelPolicy(names=http_names, drop=settings.drop_labels, rewrites=rewrites)
        tcp_policy = LabelPolicy(names=TCP_LABEL_NAMES, drop=settings.drop_labels, rewrites=rewrites)
        self.aggregates = Aggregates(
            http_label_count=len(http_policy.names),
            tcp_label_count=len(tcp_policy.names),
            max_series=settings.max_series_per_metric,
        )
        registry.register(
            IstioCollector(self.aggregates, http_names=http_policy.names, tcp_names=tcp_policy.names)
        )
        self.stats = TelemetryStats(registry)
        encoder = (
            RecordEncoder(settings.record_encoding, settings.record_max_field_bytes)
            if settings.export_records
            else None
        )
        sink = context.records.sink(settings.record_stream) if settings.export_records else None
        self._edge_schema: str | None = None
        self.edge_store: edge_sql.SqlCallEdgeStore | None = None
        if settings.call_edges.enabled:
            url = edge_sql.async_url(settings.call_edges.database_url, context.data_dir)
            self._edge_schema = settings.call_edges.schema_name
            self.edge_store = edge_sql.SqlCallEdgeStore.connect(url, schema=self._edge_schema)
        self.pipeline = TelemetryPipeline(
            aggregates=self.aggregates,
            stats=self.stats,
            sink=sink,
            edge_store=self.edge_store,
            edge_flush_s=settings.call_edges.flush_interval_s,
            now=_now,
        )
        # One way for a batch: the servicer's readers (edge) hand facts to the kinds (core), and the
        # batch to the pipeline, which feeds the adapters (metrics, records, call edges).
        self.kinds = KindBook(
            http_policy=http_policy, tcp_policy=tcp_policy, aggregates=self.aggregates, records=encoder
        )
        self.readers = decoding.ReaderSetup(
            kinds=self.kinds,
            peers=wire.PeerCache(settings.max_peer_metadata_bytes),
            records=encoder,
            paths=PathTemplates(settings.path_templates) if settings.request_path_label else None,
            trust_domain=settings.trust_domain,
        )
        self.servicer = AccessLogServicer(
            consumer=self.pipeline, readers=self.readers, max_entries=settings.max_entries_per_message
        )
        self._started = False
        if not decoding.COMPILED:
            log.warning(
                "telemetry: the compiled access-log scanner is not built (%s); using the Python reader, "
                "same results at a fraction of the throughput",
                decoding.SCANNER_MISSING,
            )

    def register_grpc(self, server: Any) -> Sequence[str]:
        return self.servicer.register(server)

    def admin_routers(self) -> Sequence[Any]:
        return []

    async def start(self) -> None:
        if self.edge_store is not None:
            try:
                await migrating.upgrade(self.edge_store.engine, schema=self._edge_schema)
            except Exception as exc:
                raise RuntimeError(
                    f"telemetry.call_edges.database_url: cannot migrate the call-edge table: {exc}"
                ) from exc
        await self.pipeline.start()
        self._started = True

    def hand_over(self) -> None:
        self.servicer.hand_over()

    async def stop(self, grace: float) -> None:
        self._started = False
        await self.pipeline.stop()

    def readiness(self) -> Readiness:
        return Readiness(self._started, "" if self._started else "not started")


def build_part(settings: TelemetrySettings, context: PartContext) -> Part:
    return TelemetryPart(settings, context)
