"""Settings of the policy card (the `policy:` section of remixer's config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AdaptiveSettings", "PolicySettings"]


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(
        None,
        description="Policy store (SQLAlchemy URL): sqlite:///path.db or postgresql://user@host/db. "
        "Unset: the SQLite file policy.db under the data directory.",
    )
    database_schema: str | None = Field(
        None,
        description="PostgreSQL schema for the policy tables (created when missing). Unset: the default.",
    )
    store_connect_timeout: float = Field(
        2.0, gt=0, le=60, description="Seconds to open a connection to the policy store before giving up."
    )
    store_timeout: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Seconds a policy store statement may take (PostgreSQL command timeout, SQLite lock "
        "wait). A store that does not answer within the two timeouts makes admin writes answer 503 naming "
        "it and counts a reload error; Checks never wait on the store.",
    )
    policy_files: list[Path] = Field(
        default_factory=list,
        description="YAML policy files (GitOps): imported into the store at start and whenever they change. "
        "Rules, lists and limits from a file are owned by that file.",
    )
    ready_with_broken_file: bool = Field(
        True,
        description="Stay ready while a policy file fails to load (the last good policy keeps serving; "
        "/readyz names the file, its error and the revision served). false: not-ready until it is fixed.",
    )
    reload_interval: float = Field(
        1.0,
        gt=0,
        le=300,
        description="Seconds between polls of the store revision (and of the policy files).",
    )
    default_decision: Literal["allow", "deny"] = Field(
        "allow", description="Decision when no deny, rate-limit or allow rule decides a request."
    )
    default_deny_status: int = Field(403, ge=200, le=599, description="HTTP status of the default deny.")
    undecodable_decision: Literal["default", "allow", "deny"] = Field(
        "default",
        description="Answer to a gRPC CheckRequest whose bytes do not decode (no attribute can be trusted): "
        "default (the default_decision), allow, or deny (with default_deny_status). Counted in "
        'remixer_policy_odd_inputs_total{kind="undecodable"}.',
    )
    max_list_entries: int = Field(
        100_000,
        ge=1,
        description="Most entries one list may hold (policy files and admin API alike); more is refused.",
    )
    quota_backend: Literal["memory", "redis"] = Field(
        "memory", description="Where quota counters live: memory (per process) or redis (shared by replicas)."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for quota_backend=redis.")
    redis_key_prefix: str = Field("remixer:quota:", description="Prefix of every Redis quota key.")
    redis_timeout: float = Field(0.05, gt=0, le=10, description="Seconds a Redis quota call may take.")
    quota_fallback: Literal["local", "allow", "deny"] = Field(
        "local",
        description="When Redis is unreachable: local (in-memory limits in this process), allow (fail open) "
        "or deny (fail closed). Each fallback is counted in remixer_policy_redis_errors_total.",
    )
    cache_size: int = Field(
        10000,
        ge=0,
        description="Decision cache entries (0 disables the cache). Quota decisions are never cached.",
    )
    cache_ttl: float = Field(10.0, ge=0, description="Seconds a cached decision stays valid.")
    decision_log_sample: float = Field(
        1.0, ge=0, le=1, description="Fraction of decisions written to the decision log (1 = all, 0 = none)."
    )
    decision_log_flush_interval: float = Field(
        0.05,
        gt=0,
        le=60,
        # Short: a few hundred records per batch reuse the same memory; longer batches measurably
        # cost page faults on the Check path (bench/check.py). Kafka batching is the shipper's job.
        description="Seconds between decision-log batches handed to the record sink.",
    )
    decision_log_buffer: int = Field(
        100000, ge=100, description="Decision records buffered between flushes; beyond it they are dropped."
    )
    jwt_payload_header: str = Field(
        "x-jwt-payload",
        description="Header carrying an already-verified JWT payload (Envoy jwt_authn "
        "forward_payload_header, base64url JSON); rules read its claims as request.jwt.<claim>.",
    )
    http_enabled: bool = Field(True, description="Serve the HTTP ext_authz mode (Envoy http_service).")
    http_address: str = Field("127.0.0.1:9192", description="Listen address of the HTTP ext_authz mode.")
    http_path_prefix: str = Field(
        "", description="Prefix Envoy's http_service.path_prefix adds to the path; stripped before matching."
    )
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="HTTP mode: a request head (and its body) must arrive within this time of its first "
        "byte, or the connection is closed (slow clients).",
    )
    http_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="HTTP mode: close a keep-alive connection idle this long. Keep Envoy's idle_timeout for "
        "the ext_authz cluster below it so Envoy, not remixer, closes idle connections.",
    )
    http_max_connections: int = Field(
        4096,
        ge=1,
        description="HTTP mode: open connections per worker; beyond it new ones are closed at once.",
    )
    http_max_head_bytes: int = Field(
        64 * 1024,
        ge=4096,
        description="HTTP mode: largest request head, answered 431 beyond it (Envoy's own limit for the "
        "request it checks is 60 KiB by default, max_request_headers_kb).",
    )
    http_head_budget_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        description="HTTP mode: request-head bytes all unfinished requests of a worker may hold together; a "
        "request that would go beyond it is answered 503 and its connection closed.",
    )
    max_staleness: float = Field(
        0.0,
        ge=0,
        description="Report not-ready when the store could not be read for this many seconds (0: stay ready "
        "and keep serving the last snapshot; staleness is still reported in /readyz and metrics).",
    )

    @field_validator("http_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not host:port")
        return value

    @field_validator("http_path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value.rstrip("/")


class AdaptiveSettings(BaseModel):
    """The `adaptive:` section: the controller loop of adaptive limits (`remixer serve` part `adaptive`)."""

    model_config = ConfigDict(extra="forbid")

    prometheus_url: str = Field(
        "http://127.0.0.1:9090",
        description="Prometheus to read the signals from when the telemetry part runs in another process "
        "(in the same process the controller reads telemetry's aggregates directly).",
    )
    prometheus_window: float = Field(
        30.0, ge=1, le=3600, description="Seconds of the rate()/histogram_quantile() window over Prometheus."
    )
    prometheus_timeout: float = Field(2.0, gt=0, le=60, description="Seconds one Prometheus query may take.")
    reporter: Literal["source", "destination"] = Field(
        "destination",
        description="Which proxy's view of the target the signals come from (the reporter label).",
    )
    leader: Literal["auto", "postgres", "redis", "sole"] = Field(
        "auto",
        description="How one replica is chosen to compute: postgres (advisory lock), redis (lease), sole "
        "(this process; worker 0). auto: postgres with a PostgreSQL store, else redis with Redis quotas, "
        "else sole.",
    )
    lease_ttl: float = Field(
        5.0, gt=0, le=300, description="Seconds a Redis leader lease lasts without renewal."
    )
    resolution: float = Field(
        0.1,
        gt=0,
        le=10,
        description="Seconds between wake-ups of the loop (each rule ticks at its interval).",
    )
