"""Envoy access-log messages -> plain facts for the core. The hot path: read few fields, cache the rest.

A reader hands what it reads to the core: each new kind's facts to the KindBook (labels, series, record
head), each entry's numbers to the core's tallies and its own fields to the core's record encoder; the
servicer (als.py) hands the batch (BatchResult) to the consumer the runtime wired in (the pipeline, which
feeds the adapters). The runtime builds one ReaderSetup of core objects; nothing here calls back into
the runtime or into an adapter.

Two readers with the same results. The compiled one (CompiledStreamReader, remixer/kit/native/als_scanner)
scans the wire bytes of each StreamAccessLogsMessage in C: one pass over the fields of
remixer.v1.alsview (a projection of Envoy's message with the same field numbers), rejecting what upb
would reject, then per entry the memo key (a tuple of the label-deciding fields), one dict lookup for
its kind, tallies kept in C and the JSON record built in one bytes object (by a writer generated from
the record schema the core's encoder follows). Python runs only on a memo miss (KindMemo has the
KindBook build the kind) and once per batch and kind (tallies added to the running series).

The Python one (StreamReader) parses the view with upb and does the same per entry in Python. It is the
reference the compiled reader is tested against (tests/telemetry/test_scanner.py), and the fallback
when the extension is not built (`ReaderSetup.open` picks; telemetry logs which at startup).

Submessages telemetry only caches on (response flags, TLS properties, the response code wrapper, peer
metadata) stay raw bytes in the key, decoded once per distinct value (wire.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.message import DecodeError

from remixer.v1 import als_view_pb2
from telemetry.core import labels as core_labels
from telemetry.core.aggregates import HttpTally, TcpTally
from telemetry.core.kinds import EntryKind, KindBook
from telemetry.core.paths import PathTemplates
from telemetry.core.records import RecordEncoder
from telemetry.edge import wire
from telemetry.structs import ENVOY_BUCKETS, UNKNOWN, EntryFacts, StreamIdentity, WorkloadIdentity

try:
    from remixer.kit.native import als_scanner
except ImportError as exc:  # not built (no compiler where it was installed): the Python reader
    als_scanner = None  # type: ignore[assignment]
    SCANNER_MISSING = str(exc)
else:
    SCANNER_MISSING = ""
COMPILED = als_scanner is not None

PEER_HEADER = "x-envoy-peer-metadata"
MAX_MEMO = 4096

METHODS = ("", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
# HTTP entries that complete a request; periodic and start logs are shipped but not counted.
HTTP_COUNTED_TYPES = frozenset({0, 6})  # NotSet, DownstreamEnd
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
    ips = metadata.get("INSTANCE_IPS")
    account = metadata.get("SERVICE_ACCOUNT")
    return StreamIdentity(
        node_id=node.id,
        log_name=ident.log_name,
        workload=core_labels.workload_identity(metadata, node.id),
        direction=core_labels.log_direction(ident.log_name),
        # istio-agent writes INSTANCE_IPS as one comma-separated string (pkg/model StringList).
        instance_ips=frozenset(ip.strip() for ip in ips.split(",") if ip.strip())
        if isinstance(ips, str)
        else frozenset(),
        service_account=account if isinstance(account, str) else "",
    )


def own_principal(identity: StreamIdentity, trust_domain: str) -> str:
    """spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT: the identity istiod gives this proxy."""
    namespace = identity.workload.namespace
    if not identity.service_account or namespace == UNKNOWN or not trust_domain:
        return ""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{identity.service_account}"


@dataclass(slots=True)
class BatchResult:
    """One StreamAccessLogsMessage: entry counts per kind (for edges and misses), and its records."""

    counts: dict[EntryKind, int] = field(default_factory=dict)
    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    entries: int = 0
    kind: str = "http"


@dataclass(frozen=True, slots=True)
class ReaderSetup:
    """What every stream's reader shares, wired once by the runtime: where kinds come from (the core's
    KindBook), the peer-metadata cache, the core's record encoder (None: records off) and request path
    templates (None: no request_path label)."""

    kinds: KindBook
    peers: wire.PeerCache
    records: RecordEncoder | None
    paths: PathTemplates | None = None
    trust_domain: str = ""

    def open(self, identity: StreamIdentity) -> StreamReader:
        """A new stream's reader: the compiled one when the extension is built, else the Python one."""
        identity = dataclasses.replace(identity, principal=own_principal(identity, self.trust_domain))
        if als_scanner is not None:
            return CompiledStreamReader(identity, self)
        return StreamReader(identity, self)


class KindMemo:
    """One stream's entry kinds by memo key. A miss turns the key into facts and has the KindBook build
    the kind; both readers share this, the compiled one calling back into it on a miss.

    A key holds every fact the labels depend on, the peer objects' raw bytes included, so entries from
    different callers never share a kind; which of them counts (and which side reports) is decided here."""

    def __init__(self, identity: StreamIdentity, *, peers: wire.PeerCache, book: KindBook) -> None:
        self.identity = identity
        self.kinds: dict[tuple[Any, ...], EntryKind] = {}
        self._peers = peers
        self._book = book

    def _new_kind(self, key: tuple[Any, ...], facts: EntryFacts) -> EntryKind:
        kind = self._book.kind(self.identity, facts)
        if len(self.kinds) >= MAX_MEMO:
            self.kinds.clear()  # cleared in place: the compiled reader holds this very dict
        self.kinds[key] = kind
        return kind

    def _direction(self, cluster: str, local_address: bytes) -> str:
        return core_labels.direction_of(
            cluster, self.identity, wire.address_ip(local_address) if local_address else ""
        )

    def _peer(self, filter_state: bytes, header: str) -> WorkloadIdentity | None:
        """The peer object istio-proxy put in filter state, else the exchange header (plain Envoy, or MX
        headers kept)."""
        peer = self._peers.from_any(filter_state) if filter_state else None
        if peer is None and header:
            peer = self._peers.from_header(header)
        return peer

    def http(self, key: tuple[Any, ...]) -> EntryKind:
        """The kind of an HTTP memo key (see StreamReader._read_http)."""
        (
            cluster,
            authority,
            raw_code,
            raw_flags,
            raw_tls,
            peer_request,
            peer_response,
            grpc_text,
            grpc_request,
            path,
            downstream_peer,
            upstream_peer,
            local_address,
        ) = key
        direction = self._direction(cluster, local_address)
        peer = None
        if direction == "inbound":
            peer = self._peer(downstream_peer, peer_request)
        elif direction == "outbound":
            peer = self._peer(upstream_peer, peer_response)
        tls = wire.tls_facts(raw_tls) if raw_tls else ("", "", False, "")
        code = wire.response_code(raw_code) if raw_code else 0
        # istio_stats: gRPC when the request's content-type says so (Grpc::Common::isGrpcRequestHeaders);
        # a grpc-status in the response also says so when content-type is not logged.
        is_grpc = grpc_request or bool(grpc_text)
        facts = EntryFacts(
            upstream_cluster=cluster,
            direction=direction,
            authority=authority,
            response_code=code,
            grpc_status=wire.grpc_status(grpc_text, code) if is_grpc else "",
            response_flags=wire.flags_text(raw_flags) if raw_flags else "-",
            protocol="grpc" if is_grpc else "http",
            peer=peer,
            peer_principal=tls[0],
            local_principal=tls[1],
            mtls=tls[2],
            request_path=path,
        )
        return self._new_kind(key, facts)

    def tcp(self, key: tuple[Any, ...]) -> EntryKind:
        _, cluster, raw_flags, raw_tls, downstream_peer, upstream_peer, local_address = key
        direction = self._direction(cluster, local_address)
        peer = None
        if direction:
            peer = self._peer(downstream_peer if direction == "inbound" else upstream_peer, "")
        tls = wire.tls_facts(raw_tls) if raw_tls else ("", "", False, "")
        facts = EntryFacts(
            upstream_cluster=cluster,
            direction=direction,
            response_flags=wire.flags_text(raw_flags) if raw_flags else "-",
            protocol="tcp",
            peer=peer,
            peer_principal=tls[0],
            local_principal=tls[1],
            mtls=tls[2],
        )
        return self._new_kind(key, facts)


# The filter-state keys istiod makes the ALS providers log (istio/istio pilot/pkg/model/telemetry_logging.go):
# 1.24+ `downstream_peer` / `upstream_peer`; before, `wasm.downstream_peer` / `wasm.upstream_peer` (a
# FlatBuffer; the `*_peer_id` keys beside them hold only the peer's node id and are not read).
DOWNSTREAM_PEER = "downstream_peer"
UPSTREAM_PEER = "upstream_peer"
WASM_DOWNSTREAM_PEER = "wasm.downstream_peer"
WASM_UPSTREAM_PEER = "wasm.upstream_peer"


def filter_state_peers(pairs: Any) -> tuple[bytes, bytes]:
    """(downstream peer, upstream peer) raw Anys from filter_state_objects: the last value of each key (map
    semantics), the 1.24+ object before the wasm.* one; b"" when absent."""
    down = up = wasm_down = wasm_up = b""
    for pair in pairs:
        key = pair.key
        if key == DOWNSTREAM_PEER:
            down = pair.value
        elif key == UPSTREAM_PEER:
            up = pair.value
        elif key == WASM_DOWNSTREAM_PEER:
            wasm_down = pair.value
        elif key == WASM_UPSTREAM_PEER:
            wasm_up = pair.value
    return down or wasm_down, up or wasm_up


def is_grpc_content_type(value: str) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: application/grpc, or application/grpc+<codec>."""
    return value == "application/grpc" or value.startswith("application/grpc+")


# TCP entries by access_log_type (envoy.data.accesslog.v3.AccessLogType): tcp_proxy logs on upstream connect
# (flush_access_log_on_connected), periodically (access_log_flush_interval) and at the end, each with the
# connection's bytes so far. Envoy before access_log_type, and loggers without those options, log only the
# end.
TCP_CONNECTED, TCP_PERIODIC, TCP_END, NOT_SET = 1, 2, 3, 0
MAX_OPEN_CONNECTIONS = 65_536


class StreamReader:
    """Per ALS stream, in Python: the reference the compiled reader must match, and its fallback."""

    def __init__(self, identity: StreamIdentity, setup: ReaderSetup) -> None:
        self.identity = identity
        self._kinds = KindMemo(identity, peers=setup.peers, book=setup.kinds)
        self._records = setup.records
        self._path_label = setup.paths.template if setup.paths else None
        # Open TCP connections of this stream by stream_id: the bytes already booked. One connection's logs
        # all come over one stream (Envoy's gRPC logger is per worker, a connection stays on its worker).
        self._connections: dict[bytes, tuple[int, int]] = {}

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

    def _encoded(self, kind: EntryKind, protocol: str, fields: dict[str, Any], index: int) -> bytes:
        assert self._records is not None
        assert kind.record_head is not None
        try:
            return self._records.encode(kind.record_head, protocol, fields)
        except (TypeError, ValueError) as exc:  # e.g. a byte count past 2**64, which no record holds
            raise MalformedMessage(f"entry {index} cannot be encoded as a record: {exc}") from None

    def _read_http(self, entries: Any) -> BatchResult:
        result = BatchResult(kind="http")
        counts = result.counts
        records = result.records
        tallies: dict[EntryKind, HttpTally] = {}
        memo = self._kinds.kinds
        new_kind = self._kinds.http
        records_on = self._records is not None
        path_label = self._path_label
        counted_types = HTTP_COUNTED_TYPES
        for index, entry in enumerate(entries):
            common = entry.common_properties
            request = entry.request
            response = entry.response
            request_headers = request.request_headers
            response_headers = response.response_headers
            trailers = response.response_trailers
            grpc_text = wire.pair(trailers, "grpc-status") if trailers else ""
            if not grpc_text and response_headers:
                grpc_text = wire.pair(response_headers, "grpc-status")
            fso = common.filter_state_objects
            down, up = filter_state_peers(fso) if fso else (b"", b"")
            path = path_label(request.path) if path_label is not None else None
            key = (
                common.upstream_cluster,
                request.authority,
                response.response_code,
                common.response_flags,
                common.tls_properties,
                wire.pair(request_headers, PEER_HEADER) if request_headers else "",
                wire.pair(response_headers, PEER_HEADER) if response_headers else "",
                grpc_text,
                is_grpc_content_type(wire.pair(request_headers, "content-type"))
                if request_headers
                else False,
                path,
                down,
                up,
                common.downstream_local_address,
            )
            kind = memo.get(key)
            if kind is None:
                kind = new_kind(key)
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
            if records_on:
                start = common.start_time
                method = request.request_method
                fields = {
                    "start_time_ms": start.seconds * 1000 + start.nanos // 1_000_000,
                    "duration_ms": duration_ms,
                    "request_id": request.request_id,
                    "method": METHODS[method] if 0 <= method < len(METHODS) else "",
                    "path": request.path,
                    "user_agent": request.user_agent,
                    "request_bytes": request_bytes,
                    "response_bytes": response_bytes,
                }
                records.append((kind.derived.record_key, self._encoded(kind, "http", fields, index)))
        # Once per batch and kind, in first-seen order (as the compiled reader does).
        for kind in counts:
            tally = tallies.get(kind)
            if tally is not None and kind.http is not None:
                tally.apply(kind.http)
        result.entries = len(entries)
        return result

    def _tcp_delta(
        self, log_type: int, stream_id: bytes, sent: int, received: int
    ) -> tuple[int, int, int, int]:
        """(sent, received, opened, closed) to book for one TCP log: per-connection deltas, so a connection
        counts once when it opens and its bytes once, whatever number of logs it sends (as istio_stats
        books them: opened on the first report, bytes as they grow, closed at the end)."""
        connections = self._connections
        if log_type in (TCP_CONNECTED, TCP_PERIODIC):
            if not stream_id:
                return 0, 0, 0, 0  # no way to tell its logs apart: book the end log alone
            seen = connections.get(stream_id)
            if seen is None and len(connections) >= MAX_OPEN_CONNECTIONS:
                del connections[next(iter(connections))]  # the oldest (its end log books it whole)
            connections[stream_id] = (
                (max(sent, seen[0]), max(received, seen[1])) if seen else (sent, received)
            )
            if seen is None:
                return sent, received, 1, 0
            return max(sent - seen[0], 0), max(received - seen[1], 0), 0, 0
        if log_type in (TCP_END, NOT_SET):
            seen = connections.pop(stream_id, None) if stream_id else None
            if seen is None:
                return sent, received, 1, 1
            return max(sent - seen[0], 0), max(received - seen[1], 0), 0, 1
        return 0, 0, 0, 0

    def _read_tcp(self, entries: Any) -> BatchResult:
        result = BatchResult(kind="tcp")
        counts = result.counts
        tallies: dict[EntryKind, TcpTally] = {}
        memo = self._kinds.kinds
        records_on = self._records is not None
        for index, entry in enumerate(entries):
            common = entry.common_properties
            props = entry.connection_properties
            fso = common.filter_state_objects
            down, up = filter_state_peers(fso) if fso else (b"", b"")
            key = (
                "tcp",
                common.upstream_cluster,
                common.response_flags,
                common.tls_properties,
                down,
                up,
                common.downstream_local_address,
            )
            kind = memo.get(key)
            if kind is None:
                kind = self._kinds.tcp(key)
            counts[kind] = counts.get(kind, 0) + 1
            sent, received = props.sent_bytes, props.received_bytes
            if kind.tcp is not None:
                booked = self._tcp_delta(common.access_log_type, common.stream_id, sent, received)
                if any(booked):
                    tally = tallies.get(kind)
                    if tally is None:
                        tally = tallies[kind] = TcpTally()
                    tally.observe(*booked)
            if records_on:
                start = common.start_time
                duration = common.duration
                fields = {
                    "start_time_ms": start.seconds * 1000 + start.nanos // 1_000_000,
                    "duration_ms": duration.seconds * 1000 + duration.nanos / 1e6,
                    "sent_bytes": sent,
                    "received_bytes": received,
                }
                result.records.append((kind.derived.record_key, self._encoded(kind, "tcp", fields, index)))
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

    def __init__(self, identity: StreamIdentity, setup: ReaderSetup) -> None:
        super().__init__(identity, setup)
        if als_scanner is None:
            raise RuntimeError(f"the compiled ALS scanner is not available: {SCANNER_MISSING}")
        kinds = self._kinds
        # No reference back to self: the scanner holds the memo and its builders, not the reader.
        self._scanner = als_scanner.Scanner(
            memo=kinds.kinds,
            http_kind=kinds.http,
            records=self._records,
            path_label=self._path_label,
            methods=METHODS,
            buckets=ENVOY_BUCKETS,
            http_counted=HTTP_COUNTED_TYPES,
            malformed=MalformedMessage,
        )

    def read_bytes(self, data: bytes) -> BatchResult:
        kind, entries, counts, records = self._scanner.scan(data)
        if entries is None or counts is None or records is None:
            # TCP logs: validated by the scan, booked per connection (stream_id deltas) by the Python reader;
            # they are few beside HTTP entries.
            return super().read_bytes(data)
        return BatchResult(counts=counts, records=records, entries=entries, kind=kind)
