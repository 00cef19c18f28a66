"""Facts -> kinds: what every entry with the same label-deciding facts shares, computed once per stream
and kind (the edge remembers kinds by the facts' raw bytes): the labels after the settings' drops and
rewrites, the running series the entries add to, and the record head."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from telemetry.core.aggregates import Aggregates, HttpSeries, TcpSeries
from telemetry.core.labels import LabelPolicy, derive, tcp_labels
from telemetry.core.records import RecordEncoder
from telemetry.structs import CallEdgeKey, Derived, EntryFacts, Labels, StreamIdentity


@dataclass(slots=True, eq=False)
class EntryKind:
    """What all entries with the same label-deciding facts share (one object: a dict key by identity)."""

    derived: Derived
    labels: Labels  # after the settings' drops / rewrites
    tcp_labels: Labels
    record_head: bytes | None  # RecordEncoder.head, None when records are off
    flags: str = "-"
    response_code: int = 0
    http: HttpSeries | None = None  # the running totals these entries add to (cap already applied)
    tcp: TcpSeries | None = None


class KindBook:
    """Builds kinds for the edge's readers: labels, series slots and record heads from one entry's facts."""

    def __init__(
        self,
        *,
        http_policy: LabelPolicy,
        tcp_policy: LabelPolicy,
        aggregates: Aggregates,
        records: RecordEncoder | None,
    ) -> None:
        self.http_policy = http_policy
        self.tcp_policy = tcp_policy
        self.aggregates = aggregates
        self.records = records

    def kind(self, stream: StreamIdentity, facts: EntryFacts) -> EntryKind:
        derived = derive(stream, facts)
        is_tcp = facts.protocol == "tcp"
        tcp = self.tcp_policy.apply(tcp_labels(derived.labels))
        # TCP kinds have no request_path to line up with the HTTP policy's names.
        labels = tcp if is_tcp else self.http_policy.apply(derived.labels)
        return EntryKind(
            derived=derived,
            labels=labels,
            tcp_labels=tcp,
            record_head=self.records.head(stream, derived, facts) if self.records else None,
            flags=facts.response_flags,
            response_code=facts.response_code,
            # Entries whose side is unknown ship as records but add to no series.
            http=self.aggregates.http_slot(labels) if derived.booked and not is_tcp else None,
            tcp=self.aggregates.tcp_slot(tcp) if derived.booked and is_tcp else None,
        )


def batch_misses_and_edges(counts: Mapping[EntryKind, int]) -> tuple[dict[str, int], dict[CallEdgeKey, int]]:
    """A batch's label misses (by label) and call edges, each counted once per entry of its kinds."""
    misses: dict[str, int] = {}
    edges: dict[CallEdgeKey, int] = {}
    for kind, count in counts.items():
        if not count:
            continue
        edge = kind.derived.edge
        if edge is not None:
            edges[edge] = edges.get(edge, 0) + count
        for label in kind.derived.misses:
            misses[label] = misses.get(label, 0) + count
    return misses, edges
