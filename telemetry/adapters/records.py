"""Access-log record encodings (schema: protos/remixer/v1/access_record.proto).

The identity part of a record is the same for every entry of one kind, so it is encoded once
(`prefix`) and each entry adds only its own fields (`encode`).
"""

from __future__ import annotations

from typing import Any

import orjson

from remixer.v1 import access_record_pb2
from telemetry.structs import LABEL_INDEX, Derived, EntryFacts, StreamIdentity

IDENTITY_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "request_protocol",
    "connection_security_policy",
)


def identity_fields(
    stream: StreamIdentity, derived: Derived, facts: EntryFacts, max_field: int
) -> dict[str, Any]:
    """The fields every entry of one kind shares: who reported, the identity labels, and the label-deciding
    entry fields (cluster, flags, and for HTTP authority, code, gRPC status)."""
    labels = derived.labels
    fields: dict[str, Any] = {"node_id": stream.node_id, "log_name": stream.log_name}
    is_tcp = labels[LABEL_INDEX["request_protocol"]] == "tcp"
    fields["kind"] = "tcp" if is_tcp else "http"
    for name in IDENTITY_LABELS:
        fields[name] = labels[LABEL_INDEX[name]]
    fields["upstream_cluster"] = facts.upstream_cluster[:max_field]
    fields["response_flags"] = facts.response_flags
    if not is_tcp:
        fields["authority"] = facts.authority[:max_field]
        fields["response_code"] = facts.response_code
        fields["grpc_status"] = facts.grpc_status
    return fields


class JsonRecords:
    """One JSON object per entry: the identity fields, then the entry's own."""

    def prefix(self, stream: StreamIdentity, derived: Derived, facts: EntryFacts, max_field: int) -> bytes:
        return orjson.dumps(identity_fields(stream, derived, facts, max_field))[:-1] + b","

    @staticmethod
    def encode(prefix: bytes, fields: dict[str, Any]) -> bytes:
        return prefix + orjson.dumps(fields)[1:]


class ProtobufRecords:
    """remixer.v1.AccessRecord in binary: identity part serialized once, concatenated per entry."""

    def prefix(self, stream: StreamIdentity, derived: Derived, facts: EntryFacts, max_field: int) -> bytes:
        fields = identity_fields(stream, derived, facts, max_field)
        return access_record_pb2.AccessRecord(**fields).SerializeToString()

    @staticmethod
    def encode(prefix: bytes, fields: dict[str, Any]) -> bytes:
        # Concatenated protobuf messages merge: identity part + entry part == one AccessRecord.
        return prefix + access_record_pb2.AccessRecord(**fields).SerializeToString()


def decode_json(value: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = orjson.loads(value)
    return decoded
