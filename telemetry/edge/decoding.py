"""Envoy access-log messages -> plain facts for the core. The hot path: read few fields, cache the rest.

Two readers with the same results. The compiled one (CompiledStreamReader, remixer/native/als_scanner)
scans the wire bytes of each StreamAccessLogsMessage in C: one pass over the fields of
remixer.v1.alsview (a projection of Envoy's message with the same field numbers), rejecting what upb
would reject, then per entry the memo key (a tuple of the label-deciding fields), one dict lookup for
its kind, tallies kept in C and the JSON record built in one bytes object. Python runs only on a memo
miss (KindMemo derives the labels) and once per batch and kind (tallies added to the running series).

The Python one (StreamReader) parses the view with upb and does the same per entry in Python. It is the
reference the compiled reader is tested against (tests/telemetry/test_scanner.py), and the fallback
when the extension is not built (`new_reader` picks; telemetry logs which at startup).

Submessages telemetry only caches on (response flags, TLS properties, the response code wrapper, peer
metadata) stay raw bytes in the key, decoded once per distinct value (wire.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.message import DecodeError

from remixer.v1 import als_view_pb2
from telemetry.core import labels as core_labels
from telemetry.core.aggregates import HttpSeries, HttpTally, TcpSeries, TcpTally
from telemetry.edge import wire
from telemetry.structs import ENVOY_BUCKETS, Derived, EntryFacts, Labels, StreamIdentity, WorkloadIdentity

try:
    from remixer.native import als_scanner
except ImportError as exc:  # not built (no compiler where it was installed): the Python reader
    als_scanner = None  # type: ignore[assignment]
    SCANNER_MISSING = str(exc)
else:
    SCANNER_MISSING = ""
COMPILED = als_scanner is not None

PEER_HEADER = "x-envoy-peer-metadata"
MAX_MEMO = 4096

METHODS = ("", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
# Entries that complete a request / connection; periodic and start logs are shipped but not counted.
HTTP_COUNTED_TYPES = frozenset({0, 6})  # NotSet, DownstreamEnd
TCP_COUNTED_TYPES = frozenset({0, 3})  # NotSet, TcpConnectionEnd
View = als_view_pb2.StreamAccessLogsMessage


class MalformedMessage(ValueError):
    """A StreamAccessLogsMessage that cannot be parsed or breaks the protocol."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedMessage("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


# Field numbers count_entries walks, from the view's descriptors (the same numbers as Envoy's).
_LOG_LISTS = frozenset(View.DESCRIPTOR.fields_by_name[name].number for name in ("http_logs", "tcp_logs"))
_LOG_ENTRY = als_view_pb2.HttpEntries.DESCRIPTOR.fields_by_name["log_entry"].number
_LOG_ENTRY_TAG = _LOG_ENTRY << 3 | 2  # length-delimited


def count_entries(data: bytes) -> int:
    """How many log entries a StreamAccessLogsMessage holds, from its framing alone (no entry is
    read): http_logs (2) or tcp_logs (3), each a run of log_entry (1). A message is at least two bytes
    an entry, so only one longer than twice a limit needs counting (see AccessLogServicer)."""
    count = pos = 0
    end = len(data)
    while pos < end:
        tag, pos = _varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
            continue
        if wire != 2:
            raise MalformedMessage(f"unexpected wire type {wire} in StreamAccessLogsMessage")
        length, pos = _varint(data, pos)
        if tag >> 3 in _LOG_LISTS:
            inner, stop = pos, min(pos + length, end)
            while inner < stop:
                if data[inner] == _LOG_ENTRY_TAG and inner + 2 < stop and data[inner + 2] < 0x80:
                    # log_entry with a length under 16 KiB (one or two bytes): the usual case, inline
                    first = data[inner + 1]
                    if first < 0x80:
                        inner += 2 + first
                    else:
                        inner += 3 + ((first & 0x7F) | (data[inner + 2] << 7))
                    count += 1
                    continue
                entry_tag, inner = _varint(data, inner)
                if entry_tag & 7 != 2:
                    raise MalformedMessage("log entries are length-delimited")
                entry_length, inner = _varint(data, inner)
                inner += entry_length
                count += entry_tag >> 3 == _LOG_ENTRY
        pos += length
    return count


def parse_message(data: bytes) -> als_view_pb2.StreamAccessLogsMessage:
    try:
        return View.FromString(data)
    except DecodeError as exc:
        raise MalformedMessage(f"not a StreamAccessLogsMessage ({len(data)} bytes): {exc}") from None


def stream_identity(raw_identifier: bytes) -> StreamIdentity:
    try:
        ident = als_pb2.StreamAccessLogsMessage.Identifier.FromString(raw_identifier)
    except DecodeError as exc:
        raise MalformedMessage(f"the stream identifier is not decodable: {exc}") from None
    node = ident.node
    metadata = wire.struct_to_dict(node.metadata) if node.HasField("metadata") else {}
    return StreamIdentity(
        node_id=node.id,
        log_name=ident.log_name,
        workload=core_labels.workload_identity(metadata, node.id),
    )


@dataclass(slots=True, eq=False)
class EntryKind:
    """What all entries with the same label-deciding fields share; computed once per stream and kind."""

    derived: Derived
    labels: Labels  # after the settings' drops / rewrites
    tcp_labels: Labels
    record_prefix: Any  # the record encoder's cached identity part
    flags: str = "-"
    response_code: int = 0
    http: HttpSeries | None = None  # the running totals these entries add to (cap already applied)
    tcp: TcpSeries | None = None


@dataclass(slots=True)
class BatchResult:
    """One StreamAccessLogsMessage: entry counts per kind (for edges and misses), and its records."""

    counts: dict[EntryKind, int] = field(default_factory=dict)
    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    entries: int = 0
    kind: str = "http"


KindBuilder = Callable[[StreamIdentity, Derived, EntryFacts], EntryKind]
RecordEncoder = Callable[[Any, dict[str, Any]], bytes]
FilterState = Sequence[tuple[str, bytes]]  # an entry's filter_state_objects as (key, serialized Any)


class KindMemo:
    """One stream's entry kinds by memo key. A miss derives the labels and builds the kind (series slot,
    record prefix); both readers share this, the compiled one calling back into it on a miss."""

    def __init__(
        self,
        identity: StreamIdentity,
        *,
        fallback_reporter: str,
        peers: wire.PeerCache,
        build_kind: KindBuilder,
    ) -> None:
        self.identity = identity
        self.kinds: dict[tuple[Any, ...], EntryKind] = {}
        self._fallback = fallback_reporter
        self._peers = peers
        self._build_kind = build_kind

    def _new_kind(self, key: tuple[Any, ...], facts: EntryFacts) -> EntryKind:
        derived = core_labels.derive(self.identity, facts, fallback_reporter=self._fallback)
        kind = self._build_kind(self.identity, derived, facts)
        if len(self.kinds) >= MAX_MEMO:
            self.kinds.clear()  # cleared in place: the compiled reader holds this very dict
        self.kinds[key] = kind
        return kind

    def _peer(self, filter_state: FilterState, header: str, outbound: bool | None) -> WorkloadIdentity | None:
        if header:
            return self._peers.from_header(header)
        name = "upstream_peer" if outbound else "downstream_peer"
        for key, value in filter_state:
            if key == name:
                return self._peers.from_any(value)
        return None

    def http(self, key: tuple[Any, ...], filter_state: FilterState) -> EntryKind:
        """The kind of an HTTP memo key (see StreamReader._read_http); filter_state only matters when the
        key's last item (outbound) is not None."""
        cluster, authority, raw_code, raw_flags, raw_tls, peer_header, grpc_status, path, outbound = key
        tls = wire.tls_facts(raw_tls) if raw_tls else ("", "", False, "")
        facts = EntryFacts(
            upstream_cluster=cluster,
            authority=authority,
            response_code=wire.response_code(raw_code) if raw_code else 0,
            grpc_status=grpc_status,
            response_flags=wire.flags_text(raw_flags) if raw_flags else "-",
            protocol="grpc" if grpc_status else "http",
            peer=self._peer(filter_state, peer_header, outbound),
            peer_principal=tls[0],
            local_principal=tls[1],
            mtls=tls[2],
            request_path=path,
        )
        return self._new_kind(key, facts)

    def tcp(self, key: tuple[Any, ...], filter_state: FilterState) -> EntryKind:
        _, cluster, raw_flags, raw_tls, upstream_raw, outbound = key
        tls = wire.tls_facts(raw_tls) if raw_tls else ("", "", False, "")
        upstream = wire.address_text(upstream_raw) if upstream_raw else ""
        facts = EntryFacts(
            upstream_cluster=cluster,
            authority=tls[3] or upstream,
            response_flags=wire.flags_text(raw_flags) if raw_flags else "-",
            protocol="tcp",
            peer=self._peer(filter_state, "", outbound),
            peer_principal=tls[0],
            local_principal=tls[1],
            mtls=tls[2],
        )
        return self._new_kind(key, facts)


def _filter_state(common: Any) -> list[tuple[str, bytes]]:
    return [(pair.key, pair.value) for pair in common.filter_state_objects]


class StreamReader:
    """Per ALS stream, in Python: the reference the compiled reader must match, and its fallback."""

    def __init__(
        self,
        identity: StreamIdentity,
        *,
        fallback_reporter: str,
        peers: wire.PeerCache,
        build_kind: KindBuilder,
        encode: RecordEncoder | None,
        max_field: int,
        path_label: Callable[[str], str] | None = None,
        json_records: bool = False,
    ) -> None:
        self.identity = identity
        self._kinds = KindMemo(
            identity, fallback_reporter=fallback_reporter, peers=peers, build_kind=build_kind
        )
        self._encode = encode
        self._max_field = max_field
        self._path_label = path_label
        # encode is JsonRecords.encode: only the compiled reader uses this (it writes the JSON itself).
        self._json_records = json_records
        # Which side's headers carry the peer's metadata depends on the side we report from.
        self._peer_in_response_default = fallback_reporter == "source"

    def read_bytes(self, data: bytes) -> BatchResult:
        """One StreamAccessLogsMessage off the wire; MalformedMessage when it is not one."""
        return self.read(parse_message(data))

    def read(self, message: als_view_pb2.StreamAccessLogsMessage) -> BatchResult:
        which = message.WhichOneof("log_entries")
        if which == "http_logs":
            return self._read_http(message.http_logs.log_entry)
        if which == "tcp_logs":
            return self._read_tcp(message.tcp_logs.log_entry)
        return BatchResult()

    def _encoded(self, prefix: Any, fields: dict[str, Any], index: int) -> bytes:
        assert self._encode is not None
        try:
            return self._encode(prefix, fields)
        except (TypeError, ValueError) as exc:  # e.g. a byte count past 2**64, which no record holds
            raise MalformedMessage(f"entry {index} cannot be encoded as a record: {exc}") from None

    def _read_http(self, entries: Any) -> BatchResult:
        result = BatchResult(kind="http")
        counts = result.counts
        records = result.records
        tallies: dict[EntryKind, HttpTally] = {}
        memo = self._kinds.kinds
        new_kind = self._kinds.http
        encode = self._encode
        max_field = self._max_field
        path_label = self._path_label
        peer_default = self._peer_in_response_default
        counted_types = HTTP_COUNTED_TYPES
        for index, entry in enumerate(entries):
            common = entry.common_properties
            request = entry.request
            response = entry.response
            cluster = common.upstream_cluster
            outbound = cluster.startswith("outbound|") or (
                peer_default and not cluster.startswith("inbound|")
            )
            response_headers = response.response_headers
            headers = response_headers if outbound else request.request_headers
            peer_header = wire.pair(headers, PEER_HEADER) if headers else ""
            trailers = response.response_trailers
            grpc_status = wire.pair(trailers, "grpc-status") if trailers else ""
            if not grpc_status and response_headers:
                grpc_status = wire.pair(response_headers, "grpc-status")
            filter_state = False if peer_header else bool(common.filter_state_objects)
            path = path_label(request.path) if path_label is not None else None
            key = (
                cluster,
                request.authority,
                response.response_code,
                common.response_flags,
                common.tls_properties,
                peer_header,
                grpc_status,
                path,
                outbound if filter_state else None,
            )
            kind = memo.get(key)
            if kind is None:
                kind = new_kind(key, _filter_state(common) if filter_state else ())
            counts[kind] = counts.get(kind, 0) + 1
            duration = common.duration
            duration_ms = duration.seconds * 1000 + duration.nanos / 1e6
            if not duration_ms:
                last = common.time_to_last_downstream_tx_byte
                duration_ms = last.seconds * 1000 + last.nanos / 1e6
            request_bytes = request.request_headers_bytes + request.request_body_bytes
            response_bytes = response.response_headers_bytes + response.response_body_bytes
            if kind.http is not None and common.access_log_type in counted_types:
                tally = tallies.get(kind)
                if tally is None:
                    tally = tallies[kind] = HttpTally()
                tally.observe(duration_ms, request_bytes, response_bytes)
            if encode is not None:
                start = common.start_time
                req_path = request.path
                method = request.request_method
                fields = {
                    "start_time_ms": start.seconds * 1000 + start.nanos // 1_000_000,
                    "duration_ms": duration_ms,
                    "request_id": request.request_id,
                    "method": METHODS[method] if 0 <= method < len(METHODS) else "",
                    "path": req_path if len(req_path) <= max_field else req_path[:max_field],
                    "user_agent": request.user_agent[:max_field],
                    "request_bytes": request_bytes,
                    "response_bytes": response_bytes,
                }
                records.append((kind.derived.record_key, self._encoded(kind.record_prefix, fields, index)))
        # Once per batch and kind, in first-seen order (as the compiled reader does).
        for kind in counts:
            tally = tallies.get(kind)
            if tally is not None and kind.http is not None:
                tally.apply(kind.http)
        result.entries = len(entries)
        return result

    def _read_tcp(self, entries: Any) -> BatchResult:
        result = BatchResult(kind="tcp")
        counts = result.counts
        tallies: dict[EntryKind, TcpTally] = {}
        memo = self._kinds.kinds
        encode = self._encode
        peer_default = self._peer_in_response_default
        for index, entry in enumerate(entries):
            common = entry.common_properties
            props = entry.connection_properties
            cluster = common.upstream_cluster
            filter_state = bool(common.filter_state_objects)
            outbound = cluster.startswith("outbound|") or (
                peer_default and not cluster.startswith("inbound|")
            )
            key = (
                "tcp",
                cluster,
                common.response_flags,
                common.tls_properties,
                common.upstream_remote_address,
                outbound if filter_state else None,
            )
            kind = memo.get(key)
            if kind is None:
                kind = self._kinds.tcp(key, _filter_state(common) if filter_state else ())
            counts[kind] = counts.get(kind, 0) + 1
            sent, received = props.sent_bytes, props.received_bytes
            if kind.tcp is not None and common.access_log_type in TCP_COUNTED_TYPES:
                tally = tallies.get(kind)
                if tally is None:
                    tally = tallies[kind] = TcpTally()
                tally.observe(sent, received)
            if encode is not None:
                start = common.start_time
                duration = common.duration
                fields = {
                    "start_time_ms": start.seconds * 1000 + start.nanos // 1_000_000,
                    "duration_ms": duration.seconds * 1000 + duration.nanos / 1e6,
                    "sent_bytes": sent,
                    "received_bytes": received,
                }
                result.records.append(
                    (kind.derived.record_key, self._encoded(kind.record_prefix, fields, index))
                )
        for kind in counts:
            tally = tallies.get(kind)
            if tally is not None and kind.tcp is not None:
                tally.apply(kind.tcp)
        result.entries = len(entries)
        return result


class CompiledStreamReader(StreamReader):
    """The same reader with the wire scan, memo keys, tallies and JSON records in C (native als_scanner).

    `read(message)` stays the Python path (for callers holding a parsed message); `read_bytes` scans.
    """

    def __init__(self, identity: StreamIdentity, **options: Any) -> None:
        super().__init__(identity, **options)
        if als_scanner is None:
            raise RuntimeError(f"the compiled ALS scanner is not available: {SCANNER_MISSING}")
        kinds = self._kinds
        # No reference back to self: the scanner holds the memo and its builders, not the reader.
        self._scanner = als_scanner.Scanner(
            memo=kinds.kinds,
            http_kind=kinds.http,
            tcp_kind=kinds.tcp,
            encode=self._encode,
            json_records=self._json_records,
            max_field=self._max_field,
            path_label=self._path_label,
            peer_in_response_default=self._peer_in_response_default,
            methods=METHODS,
            buckets=ENVOY_BUCKETS,
            http_counted=HTTP_COUNTED_TYPES,
            tcp_counted=TCP_COUNTED_TYPES,
            malformed=MalformedMessage,
        )

    def read_bytes(self, data: bytes) -> BatchResult:
        kind, entries, counts, records = self._scanner.scan(data)
        return BatchResult(counts=counts, records=records, entries=entries, kind=kind)


def new_reader(identity: StreamIdentity, **options: Any) -> StreamReader:
    """The compiled reader when the extension is built, else the Python one (same results)."""
    if als_scanner is not None:
        return CompiledStreamReader(identity, **options)
    return StreamReader(identity, **options)
