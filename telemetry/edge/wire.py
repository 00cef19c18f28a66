"""Small Envoy submessages telemetry keys on, decoded once per distinct serialized value (bounded caches)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from struct import error as struct_error
from typing import Any

import flatbuffers
import flatbuffers.encode
import flatbuffers.packer
import flatbuffers.table
from envoy.config.core.v3 import address_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from google.protobuf import any_pb2, json_format, struct_pb2, wrappers_pb2
from google.protobuf.message import DecodeError

from telemetry.core import labels as core_labels
from telemetry.structs import WorkloadIdentity

MAX_CACHED = 4096

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


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


class _BoundedCache(dict[Any, Any]):
    def remember(self, key: Any, value: Any) -> Any:
        if len(self) >= MAX_CACHED:
            self.clear()
        self[key] = value
        return value


_FLAGS = _BoundedCache()
_CODES = _BoundedCache()
_TLS = _BoundedCache()
_ADDRESSES = _BoundedCache()


def flags_text(raw: bytes) -> str:
    """Serialized ResponseFlags -> Envoy's short codes joined by ',' ('-' when none)."""
    text = _FLAGS.get(raw)
    if text is None:
        try:
            flags = accesslog_pb2.ResponseFlags.FromString(raw)
            codes = [FLAG_CODES.get(f.name, f.name) for f, value in flags.ListFields() if value]
        except DecodeError:
            codes = []
        text = _FLAGS.remember(raw, ",".join(codes) or "-")
    return str(text)


def response_code(raw: bytes) -> int:
    code = _CODES.get(raw)
    if code is None:
        try:
            code = wrappers_pb2.UInt32Value.FromString(raw).value
        except DecodeError:
            code = 0
        _CODES.remember(raw, code)
    return int(code)


def tls_facts(raw: bytes) -> tuple[str, str, bool, str]:
    """Serialized TLSProperties -> (peer URI SAN, local URI SAN, peer presented a certificate, SNI)."""
    found = _TLS.get(raw)
    if found is None:
        try:
            tls = accesslog_pb2.TLSProperties.FromString(raw)
        except DecodeError:
            return "", "", False, ""
        peer = tls.peer_certificate_properties
        peer_uri = next((s.uri for s in peer.subject_alt_name if s.uri), "")
        local_uri = next((s.uri for s in tls.local_certificate_properties.subject_alt_name if s.uri), "")
        mtls = bool(peer.subject_alt_name) or bool(peer.subject)
        found = _TLS.remember(raw, (peer_uri, local_uri, mtls, tls.tls_sni_hostname))
    return found  # type: ignore[no-any-return]


def address_text(raw: bytes) -> str:
    found = _ADDRESSES.get(raw)
    if found is None:
        try:
            sock = address_pb2.Address.FromString(raw).socket_address
            found = f"{sock.address}:{sock.port_value}" if sock.address else ""
        except DecodeError:
            found = ""
        _ADDRESSES.remember(raw, found)
    return str(found)


_IPS = _BoundedCache()


def address_ip(raw: bytes) -> str:
    """Serialized config.core.v3.Address -> its IP ("" for pipes, internal addresses, garbage)."""
    found = _IPS.get(raw)
    if found is None:
        try:
            found = address_pb2.Address.FromString(raw).socket_address.address
        except DecodeError:
            found = ""
        _IPS.remember(raw, found)
    return str(found)


def grpc_status(text: str, response_code: int) -> str:
    """istio_stats' grpc_response_status: Envoy's Grpc::Common::getGrpcStatus(trailers, headers, info) - the
    grpc-status value (trailers first; a trailers-only response has it in the headers), "-1" (InvalidCode)
    for one that is not a number up to 16, else inferred from the HTTP status (Grpc::Utility::
    httpToGrpcStatus), "" when there is no response at all."""
    if text:
        if text.isascii() and text.isdigit() and len(text) <= 20 and int(text) <= 16:
            return str(int(text))
        return "-1"
    if not response_code:
        return ""
    return _HTTP_TO_GRPC.get(response_code, "2")


# envoyproxy/envoy source/common/grpc/status.cc Utility::httpToGrpcStatus (others: 2, Unknown).
_HTTP_TO_GRPC = {400: "13", 401: "16", 403: "7", 404: "12", 429: "14", 502: "14", 503: "14", 504: "14"}


def pair(pairs: Sequence[Any], key: str) -> str:
    for pair in pairs:
        if pair.key == key:
            return str(pair.value)
    return ""


STRUCT_URL = "type.googleapis.com/google.protobuf.Struct"
BYTES_URL = "type.googleapis.com/google.protobuf.BytesValue"
# istio-proxy extensions/common/node_info.fbs (table FlatNode), field order = vtable slot.
_FLAT_NODE = ("NAME", "NAMESPACE", "LABELS", "OWNER", "WORKLOAD_NAME", None, None, None, None, "CLUSTER_ID")


def _flat_string(table: Any, slot: int) -> str:
    offset = table.Offset(4 + 2 * slot)
    return table.String(offset + table.Pos).decode() if offset else ""


def flat_node(data: bytes) -> dict[str, Any]:
    """A Wasm.Common.FlatNode FlatBuffer (istio-proxy 1.22-1.23 `wasm.*_peer`) -> node-metadata keys.
    Raises ValueError (or IndexError / struct.error, which callers treat alike) when it is not one."""
    if len(data) < 8:
        raise ValueError("too short for a FlatBuffer")
    buf = bytearray(data)
    node = flatbuffers.table.Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    out: dict[str, Any] = {}
    for slot, key in enumerate(_FLAT_NODE):
        if key == "LABELS":
            offset = node.Offset(4 + 2 * slot)
            labels: dict[str, str] = {}
            if offset:
                start, count = node.Vector(offset), node.VectorLen(offset)
                if count > 256:
                    raise ValueError("too many labels")
                for i in range(count):
                    pair = flatbuffers.table.Table(node.Bytes, node.Indirect(start + 4 * i))
                    labels[_flat_string(pair, 0)] = _flat_string(pair, 1)
            out[key] = labels
        elif key is not None:
            text = _flat_string(node, slot)
            if text:
                out[key] = text
    return out


class PeerCache:
    """Decoded peer metadata by its raw value (bounded): the x-envoy-peer-metadata header (base64 Struct in
    the node-metadata shape) or a filter-state Any, in every packing istio-proxy 1.22-1.28 logs:
    1.24 the WorkloadMetadataObject's Struct packed by Envoy (Any of google.protobuf.Struct); 1.25+ a CelState
    whose Any carries that Struct's bytes under the same type URL; 1.22-1.23 a FlatBuffers CelState, which
    Envoy logs as an Any of google.protobuf.BytesValue holding the FlatNode."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cache = _BoundedCache()

    def from_header(self, value: str) -> WorkloadIdentity | None:
        if value in self._cache:
            return self._cache[value]  # type: ignore[no-any-return]
        peer = None
        if len(value) <= self.max_bytes:
            try:
                struct = struct_pb2.Struct.FromString(base64.b64decode(value, validate=False))
                peer = core_labels.workload_identity(struct_to_dict(struct))
            except (DecodeError, binascii.Error, ValueError):
                peer = None
        return self._cache.remember(value, peer)  # type: ignore[no-any-return]

    def from_any(self, raw_any: bytes) -> WorkloadIdentity | None:
        if raw_any in self._cache:
            return self._cache[raw_any]  # type: ignore[no-any-return]
        peer = None
        if len(raw_any) <= self.max_bytes:
            try:
                packed = any_pb2.Any.FromString(raw_any)
                if packed.type_url == STRUCT_URL:
                    struct = struct_pb2.Struct.FromString(packed.value)
                    peer = core_labels.peer_identity(struct_to_dict(struct))
                elif packed.type_url == BYTES_URL:
                    flat = flat_node(wrappers_pb2.BytesValue.FromString(packed.value).value)
                    peer = core_labels.workload_identity(flat)
            except (DecodeError, ValueError, IndexError, struct_error, UnicodeDecodeError):
                peer = None
        return self._cache.remember(raw_any, peer)  # type: ignore[no-any-return]
