"""Settings for shipping records (access logs, policy decisions) to Kafka, with a local spool."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class KafkaTopics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_logs: str = Field(
        "remixer-access-logs", description="Topic for access-log records (stream access-logs)."
    )
    decisions: str = Field(
        "remixer-decisions", description="Topic for policy decision records (stream decisions)."
    )


class KafkaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Send records to Kafka. When off, records are kept in local files (records_dir).",
    )
    bootstrap_servers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:9092"], description="Kafka bootstrap brokers, host:port each."
    )
    topics: KafkaTopics = Field(default_factory=KafkaTopics, description="Topic name per record stream.")
    partitions: int | None = Field(
        None,
        ge=1,
        description="Partitions to spread records over (by key hash). Unset: all partitions the topic has.",
    )
    linger_ms: int = Field(
        50, ge=0, le=60_000, description="How long to wait to fill a batch before sending."
    )
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none",
        description="Batch compression codec (lz4/snappy/zstd need their libraries).",
    )
    acks: Literal["all", "1"] = Field(
        "all", description="Broker acknowledgement: all (at-least-once across replicas) or 1 (leader only)."
    )
    idempotence: bool = Field(
        True,
        description="Ask for an idempotent producer; without broker support remixer falls back to "
        "a plain producer and logs so.",
    )
    batch_max_records: int = Field(5000, ge=1, description="Most records per produce batch.")
    batch_max_bytes: int = Field(1_000_000, ge=1024, description="Most bytes per produce batch.")
    max_record_bytes: int = Field(
        900_000,
        ge=1024,
        description="Larger records are dropped (counted, reason too_large): the broker would refuse them.",
    )
    send_timeout_s: float = Field(
        10.0, gt=0, description="A batch not acknowledged within this time is spooled and sent again later."
    )
    retry_backoff_s: float = Field(
        1.0, gt=0, description="Wait between reconnect attempts while the broker is away."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    ssl_cafile: Path | None = Field(None, description="PEM CA bundle to verify the brokers (SSL, SASL_SSL).")
    ssl_certfile: Path | None = Field(None, description="PEM client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="PEM private key of ssl_certfile.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")


class ShippingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="The Kafka producer.")
    spool_dir: Path | None = Field(
        None, description="Where records wait while Kafka is off, slow or down. Unset: DATA_DIR/spool."
    )
    spool_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Cap on the spool's size per stream; beyond it records are dropped and counted.",
    )
    spool_segment_bytes: int = Field(
        8 * 1024 * 1024, ge=4096, description="Size of one append-only spool segment file."
    )
    records_dir: Path | None = Field(
        None,
        description="Kafka off: where records are kept, one directory per stream, in rotated files "
        "(*.jsonl, or *.binpb for protobuf records). Unset: DATA_DIR/records.",
    )
    records_file_bytes: int = Field(
        64 * 1024 * 1024, ge=4096, description="Kafka off: size at which a new record file is started."
    )
    records_max_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=4096,
        description="Kafka off: record files kept per stream; beyond it the oldest file is deleted (its "
        "records counted as dropped, reason retention).",
    )
    records_retention_hours: float = Field(
        24.0,
        ge=0,
        description="Kafka off: record files older than this are deleted (counted as dropped, reason "
        "retention); 0 keeps them until records_max_bytes.",
    )
    queue_max_records: int = Field(
        100_000, ge=1, description="In-memory records per stream before new ones spill to the spool."
    )
