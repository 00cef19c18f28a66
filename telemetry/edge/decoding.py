"""Envoy access-log protobuf -> plain facts for the core. Hot path: read few fields, cache."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import DecodeError

from telemetry.core import labels as core_labels
from telemetry.core.aggregates import HttpSeries, TcpSeries, bucket_of
from telemetry.structs import Derived, EntryFacts, Labels, StreamIdentity, WorkloadIdentity

PEER_HEADER = "x-envoy-peer-metadata"
MAX_MEMO = 4096

# Envoy's %RESPONSE_FLAGS% short strings (ResponseFlagUtils), by ResponseFlags field name.
FLAG_CODES: dict[str, str] = {
    "failed_local_healthcheck": "LH",
    "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT",
    "local_reset": "LR",
    "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF",
    "upstream_connection_termination": "UC",
    "upstream_overflow": "UO",
    "no_route_found": "NR",
    "delay_injected": "DI",
    "fault_injected": "FI",
    "rate_limited": "RL",
    "unauthorized_details": "UAEX",
    "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC",
    "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI",
    "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE",
    "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF",
    "no_filter_config_found": "NFCF",
    "duration_timeout": "DT",
    "upstream_protocol_error": "UPE",
    "no_cluster_found": "NC",
    "overload_manager": "OM",
    "dns_resolution_failure": "DF",
    "downstream_remote_reset": "DRR",
}
METHODS = ("", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
# Entries that complete a request / connection; periodic and start logs are shipped but not counted.
HTTP_COUNTED_TYPES = frozenset({0, 6})  # NotSet, DownstreamEnd
TCP_COUNTED_TYPES = frozenset({0, 3})  # NotSet, TcpConnectionEnd


class MalformedMessage(ValueError):
    """A StreamAccessLogsMessage that cannot be parsed or breaks the protocol."""


def parse_message(data: bytes) -> als_pb2.StreamAccessLogsMessage:
    try:
        return als_pb2.StreamAccessLogsMessage.FromString(data)
    except DecodeError as exc:
        raise MalformedMessage(f"not a StreamAccessLogsMessage ({len(data)} bytes): {exc}") from None


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def stream_identity(message: als_pb2.StreamAccessLogsMessage) -> StreamIdentity:
    ident = message.identifier
    node = ident.node
    metadata = struct_to_dict(node.metadata) if node.HasField("metadata") else {}
    return StreamIdentity(
        node_id=node.id,
        log_name=ident.log_name,
        workload=core_labels.workload_identity(metadata, node.id),
    )


def flags_text(flags: accesslog_pb2.ResponseFlags) -> str:
    codes = [FLAG_CODES.get(f.name, f.name) for f, value in flags.ListFields() if value]
    return ",".join(codes) or "-"


class PeerCache:
    """Decoded peer metadata (base64 Struct header, or a filter-state Any) by its raw value. Bounded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cache: dict[str | bytes, WorkloadIdentity | None] = {}

    def from_header(self, value: str) -> WorkloadIdentity | None:
        if value in self._cache:
            return self._cache[value]
        peer = None
        if len(value) <= self.max_bytes:
            try:
                struct = struct_pb2.Struct.FromString(base64.b64decode(value, validate=False))
                peer = core_labels.workload_identity(struct_to_dict(struct))
            except (DecodeError, binascii.Error, ValueError):
                peer = None
        return self._remember(value, peer)

    def from_any(self, type_url: str, value: bytes) -> WorkloadIdentity | None:
        if value in self._cache:
            return self._cache[value]
        peer = None
        if type_url.endswith("google.protobuf.Struct") and len(value) <= self.max_bytes:
            try:
                peer = core_labels.workload_identity(struct_to_dict(struct_pb2.Struct.FromString(value)))
            except (DecodeError, ValueError):
                peer = None
        return self._remember(value, peer)

    def _remember(self, key: str | bytes, peer: WorkloadIdentity | None) -> WorkloadIdentity | None:
        if len(self._cache) >= MAX_MEMO:
            self._cache.clear()
        self._cache[key] = peer
        return peer


@dataclass(slots=True, eq=False)
class EntryKind:
    """What all entries with the same label-deciding fields share; computed once per stream and kind."""

    derived: Derived
    labels: Labels  # after the settings' drops / rewrites
    tcp_labels: Labels
    record_prefix: Any  # the record encoder's cached identity part


@dataclass(slots=True)
class BatchResult:
    """One StreamAccessLogsMessage, aggregated: what the pipeline applies in one go."""

    http: dict[EntryKind, HttpSeries] = field(default_factory=dict)
    tcp: dict[EntryKind, TcpSeries] = field(default_factory=dict)
    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    entries: int = 0
    kind: str = "http"


# (derived, stream) -> final labels, tcp labels, record prefix
KindBuilder = Callable[[StreamIdentity, Derived], EntryKind]
RecordEncoder = Callable[[Any, dict[str, Any]], bytes]


class StreamReader:
    """Per ALS stream: the identity from the first message, and a memo of entry kinds."""

    def __init__(
        self,
        identity: StreamIdentity,
        *,
        fallback_reporter: str,
        peers: PeerCache,
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
        # Which response carries the peer's metadata header depends on the side we report from.
        self._peer_in_response_default = fallback_reporter == "source"

    def _new_kind(self, key: tuple[Any, ...], facts: EntryFacts) -> EntryKind:
        derived = core_labels.derive(self.identity, facts, fallback_reporter=self._fallback)
        kind = self._build_kind(self.identity, derived)
        if len(self._memo) >= MAX_MEMO:
            self._memo.clear()
        self._memo[key] = kind
        return kind

    def read(self, message: als_pb2.StreamAccessLogsMessage) -> BatchResult:
        which = message.WhichOneof("log_entries")
        if which == "http_logs":
            return self._read_http(message.http_logs.log_entry)
        if which == "tcp_logs":
            return self._read_tcp(message.tcp_logs.log_entry)
        return BatchResult()

    def _peer(
        self, common: accesslog_pb2.AccessLogCommon, header: str, outbound: bool
    ) -> WorkloadIdentity | None:
        if header:
            return self._peers.from_header(header)
        objects = common.filter_state_objects
        if objects:
            name = "upstream_peer" if outbound else "downstream_peer"
            if name in objects:
                obj = objects[name]
                return self._peers.from_any(obj.type_url, obj.value)
        return None

    @staticmethod
    def _tls(common: accesslog_pb2.AccessLogCommon) -> tuple[str, str, bool]:
        tls = common.tls_properties
        peer_cert = tls.peer_certificate_properties
        peer_uri = next((s.uri for s in peer_cert.subject_alt_name if s.uri), "")
        local_uri = next((s.uri for s in tls.local_certificate_properties.subject_alt_name if s.uri), "")
        mtls = bool(peer_cert.subject_alt_name) or bool(peer_cert.subject)
        return peer_uri, local_uri, mtls

    def _read_http(self, entries: Any) -> BatchResult:
        result = BatchResult(kind="http")
        series_by_kind = result.http
        records = result.records
        encode = self._encode
        max_field = self._max_field
        peer_default = self._peer_in_response_default
        for entry in entries:
            common = entry.common_properties
            request = entry.request
            response = entry.response
            cluster = common.upstream_cluster
            outbound = cluster.startswith("outbound|") or (
                peer_default and not cluster.startswith("inbound|")
            )
            headers = response.response_headers if outbound else request.request_headers
            peer_header = headers.get(PEER_HEADER, "") if headers else ""
            trailers = response.response_trailers
            grpc_status = trailers.get("grpc-status", "") if trailers else ""
            if not grpc_status and response.response_headers:
                grpc_status = response.response_headers.get("grpc-status", "")
            flags = flags_text(common.response_flags) if common.HasField("response_flags") else "-"
            tls = self._tls(common) if common.HasField("tls_properties") else None
            code = response.response_code.value
            authority = request.authority
            filter_state = bool(common.filter_state_objects)
            path = self._path_label(request.path) if self._path_label is not None else None
            key = (cluster, authority, code, grpc_status, flags, peer_header, tls, filter_state, path)
            kind = self._memo.get(key)
            if kind is None:
                kind = self._new_kind(
                    key,
                    EntryFacts(
                        upstream_cluster=cluster,
                        authority=authority,
                        response_code=code,
                        grpc_status=grpc_status,
                        response_flags=flags,
                        protocol="grpc" if grpc_status else "http",
                        peer=self._peer(common, peer_header, outbound),
                        peer_principal=tls[0] if tls else "",
                        local_principal=tls[1] if tls else "",
                        mtls=tls[2] if tls else False,
                        request_path=path,
                    ),
                )
            duration = common.duration
            duration_ms = duration.seconds * 1000 + duration.nanos / 1e6
            if not duration_ms:
                last = common.time_to_last_downstream_tx_byte
                duration_ms = last.seconds * 1000 + last.nanos / 1e6
            request_bytes = request.request_headers_bytes + request.request_body_bytes
            response_bytes = response.response_headers_bytes + response.response_body_bytes
            if common.access_log_type in HTTP_COUNTED_TYPES:
                series = series_by_kind.get(kind)
                if series is None:
                    series = series_by_kind[kind] = HttpSeries()
                series.count += 1
                series.duration[bucket_of(duration_ms)] += 1
                series.duration_sum += duration_ms
                series.request_bytes[bucket_of(request_bytes)] += 1
                series.request_sum += request_bytes
                series.response_bytes[bucket_of(response_bytes)] += 1
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
                                "upstream_cluster": cluster,
                                "response_flags": flags,
                                "request_id": request.request_id,
                                "method": METHODS[method] if method < len(METHODS) else "",
                                "authority": authority[:max_field],
                                "path": req_path if len(req_path) <= max_field else req_path[:max_field],
                                "user_agent": request.user_agent[:max_field],
                                "response_code": code,
                                "grpc_status": grpc_status,
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
        for entry in entries:
            common = entry.common_properties
            props = entry.connection_properties
            cluster = common.upstream_cluster
            outbound = cluster.startswith("outbound|") or (
                self._peer_in_response_default and not cluster.startswith("inbound|")
            )
            flags = flags_text(common.response_flags) if common.HasField("response_flags") else "-"
            tls = self._tls(common) if common.HasField("tls_properties") else None
            sni = common.tls_properties.tls_sni_hostname if tls else ""
            upstream = common.upstream_remote_address.socket_address
            authority = sni or (f"{upstream.address}:{upstream.port_value}" if upstream.address else "")
            filter_state = bool(common.filter_state_objects)
            key = ("tcp", cluster, authority, flags, tls, filter_state)
            kind = self._memo.get(key)
            if kind is None:
                kind = self._new_kind(
                    key,
                    EntryFacts(
                        upstream_cluster=cluster,
                        authority=authority,
                        response_flags=flags,
                        protocol="tcp",
                        peer=self._peer(common, "", outbound),
                        peer_principal=tls[0] if tls else "",
                        local_principal=tls[1] if tls else "",
                        mtls=tls[2] if tls else False,
                    ),
                )
            sent, received = props.sent_bytes, props.received_bytes
            if common.access_log_type in TCP_COUNTED_TYPES:
                series = result.tcp.get(kind)
                if series is None:
                    series = result.tcp[kind] = TcpSeries()
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
                                "upstream_cluster": cluster,
                                "response_flags": flags,
                                "sent_bytes": sent,
                                "received_bytes": received,
                            },
                        ),
                    )
                )
        result.entries = len(entries)
        return result
