"""Composition root of the telemetry card: settings + context -> a Part that `remixer serve` hosts."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from remixer.kit.parts import Part, PartContext, Readiness
from telemetry.adapters import edges as edge_sql
from telemetry.adapters import migrating, records
from telemetry.adapters.prometheus import IstioCollector, TelemetryStats
from telemetry.core.aggregates import Aggregates
from telemetry.core.labels import LabelPolicy, tcp_labels
from telemetry.core.paths import PathTemplates
from telemetry.edge import decoding, wire
from telemetry.edge.als import AccessLogServicer
from telemetry.pipeline import TelemetryPipeline
from telemetry.settings import TelemetrySettings
from telemetry.structs import LABEL_NAMES, TCP_LABEL_NAMES, Derived, EntryFacts, StreamIdentity

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
        self._http_policy = LabelPolicy(names=http_names, drop=settings.drop_labels, rewrites=rewrites)
        self._tcp_policy = LabelPolicy(names=TCP_LABEL_NAMES, drop=settings.drop_labels, rewrites=rewrites)
        self.aggregates = Aggregates(
            http_label_count=len(self._http_policy.names),
            tcp_label_count=len(self._tcp_policy.names),
            max_series=settings.max_series_per_metric,
        )
        registry.register(
            IstioCollector(
                self.aggregates, http_names=self._http_policy.names, tcp_names=self._tcp_policy.names
            )
        )
        self.stats = TelemetryStats(registry)
        self._encoder = (
            None
            if not settings.export_records
            else records.JsonRecords()
            if settings.record_encoding == "json"
            else records.ProtobufRecords()
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
        self._peers = wire.PeerCache(settings.max_peer_metadata_bytes)
        self._paths = PathTemplates(settings.path_templates) if settings.request_path_label else None
        self.servicer = AccessLogServicer(
            consumer=self.pipeline, new_reader=self._new_reader, max_entries=settings.max_entries_per_message
        )
        self._started = False
        if not decoding.COMPILED:
            log.warning(
                "telemetry: the compiled access-log scanner is not built (%s); using the Python reader, "
                "same results at a fraction of the throughput",
                decoding.SCANNER_MISSING,
            )

    def _build_kind(self, stream: StreamIdentity, derived: Derived, facts: EntryFacts) -> decoding.EntryKind:
        is_tcp = facts.protocol == "tcp"
        tcp = self._tcp_policy.apply(tcp_labels(derived.labels))
        # TCP kinds have no request_path to line up with the HTTP policy's names.
        labels = tcp if is_tcp else self._http_policy.apply(derived.labels)
        return decoding.EntryKind(
            derived=derived,
            labels=labels,
            tcp_labels=tcp,
            record_prefix=(
                self._encoder.prefix(stream, derived, facts, self.settings.record_max_field_bytes)
                if self._encoder
                else None
            ),
            flags=facts.response_flags,
            response_code=facts.response_code,
            # Entries whose side is unknown ship as records but add to no series.
            http=self.aggregates.http_slot(labels) if derived.booked and not is_tcp else None,
            tcp=self.aggregates.tcp_slot(tcp) if derived.booked and is_tcp else None,
        )

    def _reader_options(self) -> dict[str, Any]:
        return {
            "peers": self._peers,
            "build_kind": self._build_kind,
            "encode": self._encoder.encode if self._encoder else None,
            "max_field": self.settings.record_max_field_bytes,
            "path_label": self._paths.template if self._paths else None,
            "json_records": isinstance(self._encoder, records.JsonRecords),
        }

    def _new_reader(self, identity: StreamIdentity) -> decoding.StreamReader:
        principal = decoding.own_principal(identity, self.settings.trust_domain)
        return decoding.new_reader(
            dataclasses.replace(identity, principal=principal), **self._reader_options()
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
