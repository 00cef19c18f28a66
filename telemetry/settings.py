"""Settings of the access-log sink (the `telemetry:` section)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from telemetry.structs import LABEL_NAMES


def _known_label(name: str) -> str:
    if name not in LABEL_NAMES and name != "request_path":
        raise ValueError(f"{name!r} is not an Istio standard label")
    return name


class LabelRewrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="An Istio label name, e.g. destination_service.")
    pattern: str = Field(description="Python regular expression matched against the whole value.")
    replacement: str = Field(
        description="Replacement (may use \\1 groups); the value becomes this when it matches."
    )

    @field_validator("label")
    @classmethod
    def _known(cls, value: str) -> str:
        return _known_label(value)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class CallEdgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Record observed call edges for the controller.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the call-edge database (sqlite:///… or postgresql://…). "
        "Unset: SQLite file DATA_DIR/edges.db.",
    )
    schema_name: str | None = Field(
        None,
        description="PostgreSQL schema holding the table (and alembic_version_telemetry). Unset: default.",
    )
    flush_interval_s: float = Field(
        5.0, gt=0, description="How often buffered edges are upserted (one batch)."
    )


class TelemetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trust_domain: str = Field(
        "cluster.local",
        description="Mesh trust domain: the sidecar's own principal (spiffe://TD/ns/NS/sa/SERVICE_ACCOUNT) "
        "on reporter=source series, which the access log does not carry.",
    )
    drop_labels: list[str] = Field(
        default_factory=list,
        description="Labels removed from every istio_* metric (metrics slimming). Kiali needs most of them.",
    )
    label_rewrites: list[LabelRewrite] = Field(
        default_factory=list, description="Value rewrites applied to labels before aggregation, in order."
    )
    request_path_label: bool = Field(
        False, description="Add a request_path label to HTTP metrics, templated to keep cardinality bounded."
    )
    path_templates: list[str] = Field(
        default_factory=list,
        description="Templates like /api/users/{id}; a matching path becomes the template; others have "
        "numbers, UUIDs and long hex ids replaced by {num}, {uuid}, {id}.",
    )
    max_series_per_metric: int = Field(
        20_000,
        ge=1,
        description="Cap on label sets per metric family; beyond it new label sets go to one overflow series "
        "(all labels 'overflow').",
    )
    export_records: bool = Field(
        True, description="Send one record per access-log entry to the access-logs stream."
    )
    record_stream: str = Field(
        "access-logs", description="Record stream name (its Kafka topic is set in shipping)."
    )
    record_encoding: Literal["json", "protobuf"] = Field(
        "json",
        description="Record value encoding: JSON (easy ingestion) or remixer.v1.AccessRecord protobuf.",
    )
    record_max_field_bytes: int = Field(
        8192,
        ge=64,
        description="Longer string values (paths, user agents, request ids) are cut to this many characters "
        "in records.",
    )
    max_entries_per_message: int = Field(
        20_000,
        ge=1,
        description="Access-log messages with more entries are refused (INVALID_ARGUMENT, counted as "
        "malformed too_many_entries) and their records not kept. Envoy sends about buffer_size_bytes "
        "(16 KiB) a message, tens of entries; the bytes of one message are capped by "
        "server.grpc_max_receive_bytes.",
    )
    max_peer_metadata_bytes: int = Field(
        16_384,
        ge=256,
        description="Larger peer objects (filter state, x-envoy-peer-metadata) are ignored (a label miss).",
    )
    call_edges: CallEdgeSettings = Field(default_factory=CallEdgeSettings, description="Call-edge table.")

    @field_validator("drop_labels")
    @classmethod
    def _known_labels(cls, value: list[str]) -> list[str]:
        return [_known_label(name) for name in value]
