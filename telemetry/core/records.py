"""Access records, JSON or protobuf: the one encoder of protos/remixer/v1/access_record.proto.

The schema's field options say which fields every entry of a kind shares (KIND: encoded once per kind,
the record's head) and which each entry adds (ENTRY), and which entries carry them (HTTP, TCP); names,
order and types come from the descriptor. The compiled scanner writes its HTTP entries' JSON with a
writer generated from the same options (remixer/kit/native/wiregen.py `json_writer`), held to this
encoder byte for byte by tests/telemetry/test_scanner.py.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from remixer.v1 import access_record_pb2
from telemetry.structs import LABEL_INDEX, Derived, EntryFacts, StreamIdentity

# upb's descriptor classes are typed apart from the pure-Python ones, with the same API.
RECORD = cast(Descriptor, access_record_pb2.AccessRecord.DESCRIPTOR)
_CARRIED = {"http": access_record_pb2.HTTP, "tcp": access_record_pb2.TCP}
_INT_RANGES = {
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
}


def _layout(field: FieldDescriptor) -> tuple[int, int]:
    """(part, carried): the field's options in access_record.proto."""
    options: Any = field.GetOptions()
    return options.Extensions[access_record_pb2.part], options.Extensions[access_record_pb2.carried]


def fields(part: int, protocol: str) -> tuple[FieldDescriptor, ...]:
    """The fields of one part of a record (KIND or ENTRY) of an "http" or "tcp" entry, by number."""
    wanted = {(part, access_record_pb2.ALL), (part, _CARRIED[protocol])}
    by_number: list[FieldDescriptor] = [RECORD.fields_by_number[n] for n in sorted(RECORD.fields_by_number)]
    return tuple(field for field in by_number if _layout(field) in wanted)


def _names(part: int) -> dict[str, tuple[str, ...]]:
    return {protocol: tuple(f.name for f in fields(part, protocol)) for protocol in _CARRIED}


HEAD_FIELDS = _names(access_record_pb2.KIND)
ENTRY_FIELDS = _names(access_record_pb2.ENTRY)
_STRINGS = frozenset(f.name for f in RECORD.fields if f.type == FieldDescriptor.TYPE_STRING)
_RANGES = {f.name: _INT_RANGES[f.type] for f in RECORD.fields if f.type in _INT_RANGES}


class RecordEncoder:
    """A kind's head (`head`, once per kind), then each entry's record (`encode`: the head and the
    entry's own fields). String values are truncated to max_field characters; a number outside its
    field's type refuses the record (ValueError), in both encodings."""

    def __init__(self, encoding: Literal["json", "protobuf"], max_field: int) -> None:
        self.json = encoding == "json"
        self.max_field = max_field

    def _ordered(self, names: tuple[str, ...], values: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name in names:
            value = values[name]
            if name in _STRINGS:
                value = value[: self.max_field]
            else:
                low_high = _RANGES.get(name)
                if low_high is not None and not low_high[0] <= value <= low_high[1]:
                    raise ValueError(f"{name} {value} is out of its field's range")
            out[name] = value
        return out

    def head(self, stream: StreamIdentity, derived: Derived, facts: EntryFacts) -> bytes:
        """The fields every entry of one kind shares: who reported, the identity labels, and the
        label-deciding entry fields."""
        labels = derived.labels
        protocol = "tcp" if labels[LABEL_INDEX["request_protocol"]] == "tcp" else "http"
        known = {
            "node_id": stream.node_id,
            "log_name": stream.log_name,
            "kind": protocol,
            "upstream_cluster": facts.upstream_cluster,
            "response_flags": facts.response_flags,
            "authority": facts.authority,
            "response_code": facts.response_code,
            "grpc_status": facts.grpc_status,
        }
        names = HEAD_FIELDS[protocol]
        values = {name: known[name] if name in known else labels[LABEL_INDEX[name]] for name in names}
        if self.json:
            return orjson.dumps(self._ordered(names, values))[:-1] + b","
        return access_record_pb2.AccessRecord(**self._ordered(names, values)).SerializeToString()

    def encode(self, head: bytes, protocol: str, entry: dict[str, Any]) -> bytes:
        """One record of an "http" or "tcp" entry: its kind's head, then the entry's own fields (every
        name of ENTRY_FIELDS[protocol])."""
        names = ENTRY_FIELDS[protocol]
        if self.json:
            return head + orjson.dumps(self._ordered(names, entry))[1:]
        # Concatenated protobuf messages merge: head + entry part == one AccessRecord.
        return head + access_record_pb2.AccessRecord(**self._ordered(names, entry)).SerializeToString()
