"""Interfaces the service depends on; each adapter implements one and raises BackendUnavailable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from policy.structs import QuotaVerdict

__all__ = ["AuditEntry", "BackendUnavailable", "ItemKind", "PolicyStore", "QuotaBackend", "StoredPolicy"]

ItemKind = Literal["rule", "list", "limit", "adaptive"]


class BackendUnavailable(RuntimeError):
    """The store or the quota backend could not be reached; retriable."""


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    revision: int
    data: dict[str, list[dict[str, Any]]]  # {"rules": [...], "lists": [...], ...} in order


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    kind: str
    name: str
    revision: int
    body: dict[str, Any] | None


# Called inside the write transaction with the would-be policy; raises PolicyError to refuse it.
Validator = Callable[[dict[str, list[dict[str, Any]]]], None]


class PolicyStore(Protocol):
    async def migrate(self) -> None: ...
    async def revision(self) -> int: ...
    async def load(self) -> StoredPolicy: ...
    async def put(
        self, kind: ItemKind, name: str, body: dict[str, Any], *, actor: str, origin: str, validate: Validator
    ) -> int: ...
    async def delete(self, kind: ItemKind, name: str, *, actor: str, validate: Validator) -> int | None: ...
    async def sync_origin(
        self, origin: str, data: dict[str, list[dict[str, Any]]], *, actor: str, validate: Validator
    ) -> int: ...
    async def audit(self, *, limit: int) -> Sequence[AuditEntry]: ...
    async def close(self) -> None: ...


class QuotaBackend(Protocol):
    name: str

    async def take(self, *, key: str, requests: int, period: float, algorithm: str) -> QuotaVerdict:
        """Admit one request against the counter `key`, atomically. Raises BackendUnavailable."""
        ...

    async def close(self) -> None: ...
