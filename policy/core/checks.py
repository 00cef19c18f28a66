"""One Check as the edges hand it to the service, and what they get back.

An edge wraps what it received (a CheckRequest's bytes, a parsed HTTP request) in a `CheckRequest` and
makes one call, `Checker.check`; it gets a `Decision` and only translates it to its wire. The service
asks the request for no more than it needs: a cache hit reads the key and never decodes the attributes,
and the decision log's fields are read only for a sampled record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Hashable
from typing import Protocol

from policy.core import attributes
from policy.core.rules import Snapshot
from policy.structs import CheckInput, Decision

__all__ = ["CheckRequest", "Checker", "DecodedCheck", "RecordFields", "record_fields"]

# request id, source address, principal, source service, host, destination service and port, method, path
RecordFields = tuple[str, str, str, str, str, str, int, str, str]


def record_fields(req: CheckInput) -> RecordFields:
    """What a decision record holds of the request."""
    return (
        req.request_id,
        req.source_address,
        attributes.principal(req),
        req.source_service,
        req.host,
        req.destination_service,
        req.destination_port,
        req.method,
        req.path,
    )


class CheckRequest(Protocol):
    """One request to decide, read only as far as the service asks."""

    started: float  # time.perf_counter() when it arrived: the Check's latency counts from here

    def cache_key(self, snapshot: Snapshot) -> Hashable | None:
        """A decision-cache key for `snapshot` (equal keys: equal values of its referenced attributes),
        or None when it cannot be had without decoding: then the service keys on `attributes()`."""
        ...

    def attributes(self) -> CheckInput | None:
        """The request as policy reads it; None when it does not decode."""
        ...

    def record_fields(self) -> RecordFields:
        """The decision record's fields (empty ones when the request does not decode)."""
        ...


class Checker(Protocol):
    """What an edge hands its Checks to (policy.service.PolicyService)."""

    def check(self, request: CheckRequest) -> Decision | Awaitable[Decision]:
        """The decision, or, when a shared quota must be asked first, an awaitable of it. Never
        raises: whatever goes wrong is counted and answered with the policy's default."""
        ...

    def count_odd(self, kind: str, *, message: str = "") -> None:
        """Count (and now and then log) an odd input the edge met outside a Check (e.g. bad framing)."""
        ...


class DecodedCheck:
    """A Check whose attributes are at hand already (the HTTP edge parsed them; the admin API, tests)."""

    __slots__ = ("input", "started")

    def __init__(self, input: CheckInput, started: float) -> None:
        self.input = input
        self.started = started

    def cache_key(self, snapshot: Snapshot) -> Hashable:
        return snapshot.cache_key(self.input)

    def attributes(self) -> CheckInput:
        return self.input

    def record_fields(self) -> RecordFields:
        return record_fields(self.input)
