"""Envoy access-log messages -> plain facts for the core. The hot path: read few fields, cache the rest.

Messages are parsed into remixer.v1.alsview (a projection of Envoy's StreamAccessLogsMessage with the same
field numbers): fields telemetry does not need are skipped by the parser, and the submessages it only
caches on (response flags, TLS properties, the response code wrapper) stay raw bytes, decoded once per
distinct value. Per entry: one memo lookup for the labels, direct updates of the running histograms, and
one record.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.message import DecodeError

from remixer.v1 import als_view_pb2
from telemetry.core import labels as core_labels
from telemetry.core.aggregates import HttpSeries, TcpSeries
from telemetry.edge import wire
from telemetry.structs import ENVOY_BUCKETS, Derived, EntryFacts, Labels, StreamIdentity, WorkloadIdentity

PEER_HEADER = "x-envoy-peer-metadata"
MAX_MEMO = 4096

METHODS = ("", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
# Entries that complete a request / connection; periodic and start logs are shipped but not counted.
HTTP_COUNTED_TYPES = frozenset({0, 6})  # NotSet, DownstreamEnd
TCP_COUNTED_TYPES = frozenset({0, 3})  # NotSet, TcpConnectionEnd
View = als_view_pb2.StreamAccessLogsMessage


class MalformedMessage(ValueError):
    """A StreamAccessLogsMessage that cannot be parsed or breaks the protocol."""


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


class StreamReader:
    """Per ALS stream: the identity from the first message, and a memo of entry kinds."""

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
    ) -> None:
        self.identity = identity
        self._fallback = fallback_reporter
        self._peers = peers
        self._build_kind = build_kind
        self._encode = encode
        self._max_field = max_field
        self._path_label = path_label
        self._memo: dict[tuple[Any, ...], EntryKind] = {}
        # Which side's headers carry the peer's metadata depends on the side we report from.
        self._peer_in_response_default = fallback_reporter == "source"

    def _new_kind(self, key: tuple[Any, ...], facts: EntryFacts) -> EntryKind:
        derived = core_labels.derive(self.identity, facts, fallback_reporter=self._fallback)
        kind = self._build_kind(self.identity, derived, facts)
        if len(self._memo) >= MAX_MEMO:
            self._memo.clear()
        self._memo[key] = kind
        return kind

    def read(self, message: als_view_pb2.StreamAccessLogsMessage) -> BatchResult:
        which = message.WhichOneof("log_entries")
        if which == "http_logs":
            return self._read_http(message.http_logs.log_entry)
        if which == "tcp_logs":
            return self._read_tcp(message.tcp_logs.log_entry)
        return BatchResult()

    def _peer(self, common: Any, header: str, outbound: bool) -> WorkloadIdentity | None:
        if header:
            return self._peers.from_header(header)
        name = "upstream_peer" if outbound else "downstream_peer"
        for pair in common.filter_state_objects:
            if pair.key == name:
                return self._peers.from_any(pair.value)
        return None

    def _http_kind(self, key: tuple[Any, ...], common: Any, request: Any, response: Any) -> EntryKind:
        cluster, authority, raw_code, raw_flags, raw_tls, peer_header, grpc_status, path, outbound = key
        tls = wire.tls_facts(raw_tls) if raw_tls else ("", "", False, "")
        facts = EntryFacts(
            upstream_cluster=cluster,
            authority=authority,
            response_code=wire.response_code(raw_code) if raw_code else 0,
            grpc_status=grpc_status,
            response_flags=wire.flags_text(raw_flags) if raw_flags else "-",
            protocol="grpc" if grpc_status else "http",
            peer=self._peer(common, peer_header, outbound),
            peer_principal=tls[0],
            local_principal=tls[1],
            mtls=tls[2],
            request_path=path,
        )
        return self._new_kind(key, facts)

    def _read_http(self, entries: Any) -> BatchResult:
        result = BatchResult(kind="http")
        counts = result.counts
        records = result.records
        memo = self._memo
        encode = self._encode
        max_field = self._max_field
        path_label = self._path_label
        peer_default = self._peer_in_response_default
        buckets = ENVOY_BUCKETS
        counted_types = HTTP_COUNTED_TYPES
        for entry in entries:
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
            raw_code = response.response_code
            authority = request.authority
            raw_flags = common.response_flags
            path = path_label(request.path) if path_label is not None else None
            key = (
                cluster,
                authority,
                raw_code,
                raw_flags,
                common.tls_properties,
                peer_header,
                grpc_status,
                path,
                outbound if filter_state else None,
            )
            kind = memo.get(key)
            if kind is None:
                kind = self._http_kind(key, common, request, response)
            counts[kind] = counts.get(kind, 0) + 1
            duration = common.duration
            duration_ms = duration.seconds * 1000 + duration.nanos / 1e6
            if not duration_ms:
                last = common.time_to_last_downstream_tx_byte
                duration_ms = last.seconds * 1000 + last.nanos / 1e6
            request_bytes = request.request_headers_bytes + request.request_body_bytes
            response_bytes = response.response_headers_bytes + response.response_body_bytes
            series = kind.http
            if series is not None and common.access_log_type in counted_types:
                series.count += 1
                series.duration[bisect_left(buckets, duration_ms)] += 1
                series.duration_sum += duration_ms
                series.request_bytes[bisect_left(buckets, request_bytes)] += 1
                series.request_sum += request_bytes
                series.response_bytes[bisect_left(buckets, response_bytes)] += 1
                series.response_sum += response_bytes
            if encode is not None:
                start = common.start_time
                req_path = request.path
                method = request.request_method
                records.append(
                    (
                        kind.derived.record_key,
                        encode(
                            kind.record_prefix,
                            {
                                "start_time_ms": start.seconds * 1000 + start.nanos // 1_000_000,
                                "duration_ms": duration_ms,
                                "request_id": request.request_id,
                                "method": METHODS[method] if 0 <= method < len(METHODS) else "",
                                "path": req_path if len(req_path) <= max_field else req_path[:max_field],
                                "user_agent": request.user_agent[:max_field],
                                "request_bytes": request_bytes,
                                "response_bytes": response_bytes,
                            },
                        ),
                    )
                )
        result.entries = len(entries)
        return result

    def _read_tcp(self, entries: Any) -> BatchResult:
        result = BatchResult(kind="tcp")
        encode = self._encode
        peer_default = self._peer_in_response_default
        for entry in entries:
            common = entry.common_properties
            props = entry.connection_properties
            cluster = common.upstream_cluster
            raw_tls = common.tls_properties
            raw_flags = common.response_flags
            filter_state = bool(common.filter_state_objects)
            outbound = cluster.startswith("outbound|") or (
                peer_default and not cluster.startswith("inbound|")
            )
            upstream_raw = common.upstream_remote_address
            key = ("tcp", cluster, raw_flags, raw_tls, upstream_raw, outbound if filter_state else None)
            kind = self._memo.get(key)
            if kind is None:
                tls = wire.tls_facts(raw_tls) if raw_tls else ("", "", False, "")
                upstream = wire.address_text(upstream_raw) if upstream_raw else ""
                facts = EntryFacts(
                    upstream_cluster=cluster,
                    authority=tls[3] or upstream,
                    response_flags=wire.flags_text(raw_flags) if raw_flags else "-",
                    protocol="tcp",
                    peer=self._peer(common, "", outbound),
                    peer_principal=tls[0],
                    local_principal=tls[1],
                    mtls=tls[2],
                )
                kind = self._new_kind(key, facts)
            result.counts[kind] = result.counts.get(kind, 0) + 1
            sent, received = props.sent_bytes, props.received_bytes
            series = kind.tcp
            if series is not None and common.access_log_type in TCP_COUNTED_TYPES:
                series.sent += sent
                series.received += received
                series.opened += 1
                series.closed += 1
            if encode is not None:
                start = common.start_time
                duration = common.duration
                result.records.append(
                    (
                        kind.derived.record_key,
                        encode(
                            kind.record_prefix,
                            {
                                "start_time_ms": start.seconds * 1000 + start.nanos // 1_000_000,
                                "duration_ms": duration.seconds * 1000 + duration.nanos / 1e6,
                                "sent_bytes": sent,
                                "received_bytes": received,
                            },
                        ),
                    )
                )
        result.entries = len(entries)
        return result
