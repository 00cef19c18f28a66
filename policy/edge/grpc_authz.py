"""envoy.service.auth.v3.Authorization/Check on grpc.aio: CheckRequest bytes -> one Check -> CheckResponse.

The handler is registered by hand (not through the generated servicer) so that (a) it receives the
request's bytes and hands them to the service as a `WireCheck`: a decision-cache hit is keyed straight
off the wire (remixer/kit/native/check_keys.pyx) and never builds a upb message; (b) a request that does
not decode still gets the policy's decision instead of a gRPC error; (c) responses for the prebuilt
decisions of a snapshot are serialised once and sent as bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from policy.core import attributes
from policy.core.checks import Checker, RecordFields, record_fields
from policy.core.rules import Snapshot
from policy.structs import CheckInput, Decision

try:
    from remixer.kit.native.check_keys import KeyReader, log_fields, read_input
except ImportError:  # built without a C compiler: every Check goes through upb (same decisions)
    KeyReader = log_fields = read_input = None  # type: ignore[assignment,misc]

__all__ = ["SERVICE_NAME", "AuthorizationHandler", "WireCheck", "WireKeys", "check_input", "check_response"]

log = logging.getLogger("remixer.policy")

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_GRPC_CODE = {"allow": 0, "deny": 7, "rate_limited": 8}  # OK, PERMISSION_DENIED, RESOURCE_EXHAUSTED
_UNDECODABLE = object()


def _headers(pairs: tuple[tuple[str, str], ...]) -> list[Any]:
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE)
        for k, v in pairs
    ]


def check_response(decision: Decision) -> Any:
    metadata = struct_pb2.Struct()
    metadata.update({"rule": decision.rule_id, "decision": decision.kind})
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=_GRPC_CODE[decision.kind]), dynamic_metadata=metadata
    )
    if decision.allowed:
        ok = response.ok_response
        ok.SetInParent()
        ok.headers.extend(_headers(decision.upstream_headers))
        ok.headers_to_remove.extend(decision.remove_headers)
        ok.response_headers_to_add.extend(_headers(decision.response_headers))
    else:
        denied = response.denied_response
        denied.status.CopyFrom(http_status_pb2.HttpStatus(code=decision.status))
        denied.headers.extend(_headers(decision.response_headers))
        denied.body = decision.body
    return response


def check_input(request: Any) -> CheckInput:
    # Each upb sub-message access builds a wrapper object: read each one once. Positional arguments
    # (in CheckInput's field order) cost a fifth less than keywords on this per-Check path.
    attrs = request.attributes
    http = attrs.request.http
    headers = http.headers
    source = attrs.source
    destination = attrs.destination
    destination_socket = destination.address.socket_address
    return CheckInput(
        http.method,
        http.path,
        http.host,
        http.scheme,
        # http.id is Envoy's numeric stream id; x-request-id is what access logs carry.
        headers.get("x-request-id") or http.id,
        headers,
        source.address.socket_address.address,
        source.principal,
        source.service,
        source.labels,
        destination_socket.address,
        destination_socket.port_value,
        destination.service,
        destination.labels,
        attrs.context_extensions,
    )


def _parse(data: bytes) -> Any:
    try:
        return external_auth_pb2.CheckRequest.FromString(data)
    except DecodeError:
        return _UNDECODABLE


def decode_input(data: bytes) -> CheckInput | None:
    """A CheckRequest's bytes as the policy reads them; None when they do not decode."""
    if read_input is not None:
        values = read_input(data)  # the shape Envoy sends, read in C; anything else: upb
        if values is not None:
            return CheckInput(*values)
    request = _parse(data)
    return None if request is _UNDECODABLE else check_input(request)


def wire_record_fields(data: bytes) -> RecordFields:
    """A decision record's fields from a CheckRequest's bytes."""
    fields = log_fields(data) if log_fields is not None else None
    if fields is None:
        return record_fields(decode_input(data) or CheckInput())
    request_id, address, principal, xfcc, service, host, destination, port, method, path = fields
    principal = attributes.peer_principal(principal, xfcc)
    return (request_id, address, principal, service, host, destination, port, method, path)


def _serialize(response: Any) -> bytes:
    return response if isinstance(response, bytes) else bytes(response.SerializeToString())


class WireKeys:
    """The compiled key reader for the snapshot last asked about, built again when a reload swaps it."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._reader: KeyReader | None = None

    def key(self, snapshot: Snapshot, data: bytes) -> bytes | None:
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            self._reader = None
            if KeyReader is not None:
                reader = KeyReader(snapshot.referenced, jwt_header=snapshot.jwt_header)
                self._reader = reader if reader.usable else None
        current = self._reader
        return current.key(data) if current is not None else None


class WireCheck:
    """One CheckRequest as its bytes: the key and the record's fields are read off them in C, the
    attributes decoded only when asked (a cache miss)."""

    __slots__ = ("_data", "_keys", "started")

    def __init__(self, data: bytes, keys: WireKeys, started: float) -> None:
        self._data = data
        self._keys = keys
        self.started = started

    def cache_key(self, snapshot: Snapshot) -> Hashable | None:
        return self._keys.key(snapshot, self._data)

    def attributes(self) -> CheckInput | None:
        return decode_input(self._data)

    def record_fields(self) -> RecordFields:
        return wire_record_fields(self._data)


class AuthorizationHandler:
    def __init__(self, checks: Checker) -> None:
        self._checks = checks
        self._keys = WireKeys()
        self._wire: dict[Decision, bytes] = {}

    def register(self, server: Any) -> list[str]:
        if KeyReader is None:
            log.warning(
                "remixer/kit/native/check_keys was not built (no C compiler at install): every Check is read "
                "through upb and cache hits cost more CPU; the decisions are the same"
            )
        handlers = {
            # No request deserializer: `check` gets the bytes (see the module docstring).
            "Check": grpc.unary_unary_rpc_method_handler(self.check, response_serializer=_serialize)
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        # As the generated code does: registered methods are looked up in C, not through a Python
        # generic handler per call.
        if hasattr(server, "add_registered_method_handlers"):
            server.add_registered_method_handlers(SERVICE_NAME, handlers)
        return [SERVICE_NAME]

    def wire(self, decision: Decision) -> bytes:
        data = self._wire.get(decision)
        if data is None:
            data = bytes(check_response(decision).SerializeToString())
            # Rate-limit denials are built per request: caching them would only grow the dict.
            if decision.kind != "rate_limited":
                if len(self._wire) > 4096:
                    self._wire.clear()
                self._wire[decision] = data
        return data

    async def check(self, data: bytes, context: Any) -> bytes:
        decision = self._checks.check(WireCheck(data, self._keys, time.perf_counter()))
        if not isinstance(decision, Decision):
            decision = await decision
        return self.wire(decision)
