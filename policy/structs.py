"""Plain domain values shared by every layer: what a Check asks, what policy decides. No protobuf here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CheckInput",
    "Decision",
    "DecisionKind",
    "ItemOwnedByFile",
    "PolicyError",
    "QuotaVerdict",
    "TraceStep",
]

DecisionKind = Literal["allow", "deny", "rate_limited"]


class PolicyError(ValueError):
    """A policy document (rule, list or limit) is invalid; the message names the item and the field."""


class ItemOwnedByFile(PolicyError):
    """The item comes from a policy file (GitOps): change the file, not the API."""


@dataclass(slots=True, eq=False)
class CheckInput:
    """The attributes of one request as ext_authz (gRPC or HTTP) reported them.

    `headers` may be the protobuf map itself: matching reads only the keys rules reference.
    `memo` caches values derived on demand (parsed query, SPIFFE parts, JWT claims).
    Not frozen: one is built per Check, and a frozen dataclass's __init__ costs ~3x more. Treat as read-only.
    """

    method: str = ""
    path: str = ""  # the request target as sent: path plus query string, not decoded
    host: str = ""
    scheme: str = ""
    request_id: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    source_address: str = ""
    source_principal: str = ""
    source_service: str = ""
    source_labels: Mapping[str, str] = field(default_factory=dict)
    destination_address: str = ""
    destination_port: int = 0
    destination_service: str = ""
    destination_labels: Mapping[str, str] = field(default_factory=dict)
    context: Mapping[str, str] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class Decision:
    """What to tell Envoy. Identity-hashed: the edge caches the wire response per Decision object."""

    kind: DecisionKind
    status: int  # HTTP status for denials; 200 for allows
    rule_id: str  # "default" when no rule decided
    body: str = ""
    # On deny: headers for the client. On allow: response_headers_to_add (to the downstream response).
    response_headers: tuple[tuple[str, str], ...] = ()
    upstream_headers: tuple[tuple[str, str], ...] = ()  # allow only: set on the request going upstream
    remove_headers: tuple[str, ...] = ()  # allow only: removed from the request going upstream

    @property
    def allowed(self) -> bool:
        return self.kind == "allow"


@dataclass(frozen=True, slots=True)
class QuotaVerdict:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until one more request would be admitted (0 when allowed)


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One step of an evaluation, for POST /v1/evaluate."""

    stage: str  # deny | rate_limit | allow | default | cache
    rule_id: str
    matched: bool
    note: str = ""
