"""The committed generated modules match protos/, and the ALS view stays wire-compatible with Envoy's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from remixer.v1 import access_record_pb2, als_view_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "protos" / "regenerate.py")
    assert spec is not None
    assert spec.loader is not None
    regenerate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regenerate)
    regenerate.regenerate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2.py*"))
    assert fresh, "protoc produced nothing"
    stale = [str(p) for p in fresh if (tmp_path / p).read_text() != (ROOT / p).read_text()]
    assert not stale, f"run `python protos/regenerate.py`: stale {stale}"


_LENGTH_DELIMITED = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}


def _wire(field: FieldDescriptor) -> str:
    if field.type in _LENGTH_DELIMITED or field.message_type is not None:
        return "len"
    return "varint"


def _check(view: Descriptor, envoy: Descriptor) -> None:
    for field in view.fields:
        theirs = envoy.fields_by_number.get(field.number)
        assert theirs is not None, (
            f"{view.full_name}.{field.name}: no field {field.number} in {envoy.full_name}"
        )
        assert field.name == theirs.name, f"{view.full_name}.{field.name} is {theirs.name} in Envoy"
        assert _wire(field) == _wire(theirs), f"{view.full_name}.{field.name}: wire type differs"
        if (
            field.message_type is not None
            and theirs.message_type is not None
            and not theirs.message_type.GetOptions().map_entry
        ) and theirs.message_type.full_name.startswith("envoy."):
            _check(field.message_type, theirs.message_type)


def test_als_view_matches_envoy_field_numbers() -> None:
    _check(als_view_pb2.StreamAccessLogsMessage.DESCRIPTOR, als_pb2.StreamAccessLogsMessage.DESCRIPTOR)
    _check(als_view_pb2.HttpEntry.DESCRIPTOR, accesslog_pb2.HTTPAccessLogEntry.DESCRIPTOR)


def test_record_schema_names_are_the_json_keys() -> None:
    names = {f.name for f in access_record_pb2.AccessRecord.DESCRIPTOR.fields}
    assert {"destination_service", "request_id", "response_code", "start_time_ms", "sent_bytes"} <= names
