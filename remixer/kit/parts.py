"""The contract between `remixer serve` and the cards it hosts.

A card (policy, telemetry) exposes `build_part(settings, context) -> Part`. The server owns the
gRPC server, the admin HTTP app and the process lifecycle; a part only registers what it serves
and starts/stops its own background work. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# A record bound for Kafka (or the local spool while Kafka is off or away): key, value.
Record = tuple[bytes | None, bytes]


class RecordSink(Protocol):
    """One stream of records (one Kafka topic). Implemented by `remixer.kit.shipping`."""

    def offer(self, records: Sequence[Record]) -> int:
        """Queue without waiting; returns how many were accepted (the rest are counted as dropped)."""
        ...

    async def put(self, records: Sequence[Record]) -> None:
        """Queue, waiting while the queue is full: the caller's backpressure."""
        ...


class RecordSinks(Protocol):
    def sink(self, stream: str) -> RecordSink:
        """The sink for a named stream ("access-logs", "decisions"); topic names come from settings."""
        ...


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PartContext:
    """What the server hands every part it builds."""

    data_dir: Path
    # prometheus_client.CollectorRegistry; typed loosely so cards' cores need not import it.
    registry: Any
    records: RecordSinks
    # FastAPI dependency that enforces the admin bearer token on write endpoints.
    require_writer: Callable[..., Awaitable[None]]
    # With `remixer serve --workers N` every worker binds the same ports: a part that opens its
    # own listener must then set SO_REUSEPORT (the server has already checked the ports are free).
    reuse_port: bool = False
    worker_index: int = 0


class Part(Protocol):
    name: str

    def register_grpc(self, server: Any) -> Sequence[str]:
        """Add servicers to the grpc.aio server; return the full service names (health, reflection)."""
        ...

    def admin_routers(self) -> Sequence[Any]:
        """FastAPI APIRouters mounted on the admin app (paths under /v1/...)."""
        ...

    async def start(self) -> None:
        """Start background tasks and own listeners (e.g. HTTP ext_authz); OSError if a port is taken."""
        ...

    def hand_over(self) -> None:
        """The drain began: keep serving, but let long-lived peers (access-log streams) move to other
        replicas."""
        ...

    async def stop(self, grace: float) -> None:
        """Stop accepting, drain in-flight work, flush or spool buffered data."""
        ...

    def readiness(self) -> Readiness: ...
