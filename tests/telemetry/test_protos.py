"""The committed generated modules match protos/, and the ALS view stays wire-compatible with Envoy's."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import duration_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from remixer.kit.native import wiregen
from remixer.v1 import access_record_pb2, als_view_pb2

ROOT = Path(__file__).resolve().parents[2]


def regenerate_module() -> Any:
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "protos" / "regenerate.py")
    assert spec is not None
    assert spec.loader is not None
    regenerate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regenerate)
    return regenerate


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    regenerate_module().regenerate_protos(tmp_path)
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


# ---- the compiled scanner's field table (remixer/kit/native/als_fields.txt) --------------------------

ALS_TABLE = ROOT / "remixer" / "kit" / "native" / "als_fields.txt"
_VIEW_TYPES = {
    "text": FieldDescriptor.TYPE_STRING,
    "raw": FieldDescriptor.TYPE_BYTES,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "int32": FieldDescriptor.TYPE_INT32,
}


def _view_fields() -> dict[tuple[str, str], FieldDescriptor]:
    """(Envoy message, field name) -> the view's field, pairing the two trees by field number."""
    pairs: dict[tuple[str, str], FieldDescriptor] = {}

    def walk(view: Descriptor, envoy: Descriptor) -> None:
        for field in view.fields:
            theirs = envoy.fields_by_number[field.number]
            pairs[(envoy.name, theirs.name)] = field
            # Envoy's own messages; maps and Duration / Timestamp are read whole (scan_pair, scan_time)
            inner = theirs.message_type
            if field.message_type is None or not inner.full_name.startswith("envoy."):
                continue
            if not inner.GetOptions().map_entry:
                walk(field.message_type, inner)

    walk(als_view_pb2.StreamAccessLogsMessage.DESCRIPTOR, als_pb2.StreamAccessLogsMessage.DESCRIPTOR)
    return pairs


def test_wire_tables_generate_the_committed_readers() -> None:
    for table, generated in regenerate_module().WIRE_TABLES:
        assert wiregen.cython(wiregen.load(ROOT / table)) == (ROOT / generated).read_text(), (
            f"run `make protos`: {generated} is stale"
        )


def test_the_record_writer_is_generated_from_the_record_schema() -> None:
    regenerate = regenerate_module()
    assert regenerate.record_writer() == (ROOT / regenerate.RECORD_WRITER).read_text(), (
        f"run `make protos`: {regenerate.RECORD_WRITER} is stale"
    )


def test_every_record_field_says_which_part_of_a_record_it_is() -> None:
    """A field without its (part) option would be left out of every encoder."""
    unplaced = [
        f.name
        for f in access_record_pb2.AccessRecord.DESCRIPTOR.fields
        if f.GetOptions().Extensions[access_record_pb2.part] == access_record_pb2.RECORD_PART_UNSPECIFIED
    ]
    assert not unplaced


def test_the_json_writer_refuses_a_field_it_cannot_write() -> None:
    message = accesslog_pb2.AccessLogCommon.DESCRIPTOR
    fields = (message.fields_by_name["upstream_cluster"], message.fields_by_name["start_time"])
    with pytest.raises(wiregen.TableError, match=r"no JSON writer for .*AccessLogCommon\.start_time"):
        wiregen.json_writer(fields, "R", "t")
    generated = wiregen.json_writer(fields[:1], "R", "t")
    number = message.fields_by_name["upstream_cluster"].number
    assert (
        f"    Span upstream_cluster  # envoy.data.accesslog.v3.AccessLogCommon.upstream_cluster = {number}"
        in (generated)
    )
    assert "put_escaped(w, r.upstream_cluster.ptr, truncated(r.upstream_cluster, max_chars))" in generated


def test_the_scanner_reads_what_the_view_declares_and_nothing_else() -> None:
    """upb parity by construction: each field the scanner reads is declared in the view with the same
    checks (string = UTF-8 checked, bytes = not, a message parsed), and the view declares no field the
    scanner skips (upb would check it, the scanner would not)."""
    view = _view_fields()
    table = wiregen.load(ALS_TABLE)
    read = set()
    for line in table.lines:
        where = f"{line.message.name}.{line.field.name}"
        ours = view.get((line.message.name, line.field.name))
        assert ours is not None, f"{where} is read but not in als_view.proto"
        read.add((line.message.name, line.field.name))
        if line.reader in _VIEW_TYPES:
            assert ours.type == _VIEW_TYPES[line.reader], f"{where}: {line.reader} but not so in the view"
        elif line.reader == "time":
            assert ours.message_type.name == "Duration", where
        elif line.reader in ("first", "last", "seen"):
            value_is_text = (
                line.field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING
            )
            assert ours.is_repeated, where
            assert ours.message_type.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING, where
            value = ours.message_type.fields_by_name["value"].type
            assert value == (FieldDescriptor.TYPE_STRING if value_is_text else FieldDescriptor.TYPE_BYTES), (
                where
            )
        elif line.reader == "message":
            assert ours.message_type is not None, where
        # tag lines are read by hand-written code (als_scanner.scan_message, scan_entries)
    assert set(view) == read, f"declared in the view, not read by the scanner: {set(view) - read}"


def test_a_table_line_the_descriptor_contradicts_is_refused() -> None:
    head = "@proto envoy.data.accesslog.v3.accesslog_pb2\n"
    for line, problem in [
        ("AccessLogCommon.upstream_cluster uint64 x", "is not a uint64"),
        ("AccessLogCommon.route_name raw x", ""),
        ("AccessLogCommon.no_such_field text x", "has no field"),
        ("HTTPRequestProperties.request_headers first(a) x", ""),
        ("HTTPRequestProperties.request_headers text x", "cannot be read as text"),
        ("AccessLogCommon.filter_state_objects first(a) x", "does not map to strings"),
        ("AccessLogCommon.filter_state_objects last(wasm.a) x", ""),  # any length-delimited value
        ("AccessLogCommon.upstream_cluster last(a) x", "is not a map"),
        ("AccessLogCommon.filter_state_objects last x", "take an argument"),
        ("AccessLogCommon.start_time int32 x", "is not an int32"),
        ("AccessLogCommon.upstream_cluster text", "text lines name a struct member"),
        ("AccessLogCommon.start_time empty x", "name no struct member"),
        ("AccessLogCommon.upstream_cluster empty", "is not a message"),
        ("AccessLogCommon.access_log_type raw x", ""),  # a varint: its bytes
        ("AccessLogCommon.start_time raw x", ""),
        ("AccessLogCommon.filter_state_objects entries m", ""),
        ("AccessLogCommon.upstream_cluster entries m", "is not a map"),
    ]:
        if problem:
            with pytest.raises(wiregen.TableError, match=problem):
                wiregen.parse(head + line, "t")
        else:
            assert len(wiregen.parse(head + line, "t").lines) == 1


def test_a_field_added_to_the_table_gets_its_tag_member_and_branch() -> None:
    text = ALS_TABLE.read_text() + "AccessLogCommon.route_name text route_name\n"
    generated = wiregen.cython(wiregen.parse(text, "t"))
    number = accesslog_pb2.AccessLogCommon.DESCRIPTOR.fields_by_name["route_name"].number
    assert f"T_AccessLogCommon_route_name = {number << 3 | 2:#04x}" in generated
    assert "    Span route_name  # AccessLogCommon.route_name" in generated
    assert "err = read_text(&p, end, &f.route_name)" in generated


def test_a_time_line_gets_its_reader_and_tags_from_the_descriptor() -> None:
    """Duration and Timestamp: their tags and reader come from google.protobuf's descriptors, one reader
    for both (one wire shape) into the one Duration struct."""
    head = "@proto envoy.data.accesslog.v3.accesslog_pb2\n"
    generated = wiregen.cython(wiregen.parse(head + "AccessLogCommon.duration time d\n", "t"))
    nanos = duration_pb2.Duration.DESCRIPTOR.fields_by_name["nanos"].number
    assert f"T_TIME_nanos = {nanos << 3:#04x}  # google.protobuf.Duration" in generated
    assert (
        "cdef struct Duration:  # google.protobuf.Duration\n    int64_t seconds\n    int32_t nanos"
        in generated
    )
    assert "err = scan_time(span, depth - 1, &f.d)" in generated
    assert "cdef int scan_time(Span msg, int depth, Duration* out) noexcept:" in generated
    assert "out.nanos = <int32_t><uint32_t>number" in generated
    both = wiregen.cython(
        wiregen.parse(head + "AccessLogCommon.start_time time s\nAccessLogCommon.duration time d\n", "t")
    )
    assert both.count("cdef int scan_time(") == 1
    assert '"""google.protobuf.Duration / google.protobuf.Timestamp"""' in both
    twice = (
        "@proto google.protobuf.timestamp_pb2\nAccessLogCommon.start_time time s\nTimestamp.seconds raw x\n"
    )
    with pytest.raises(wiregen.TableError, match="Timestamp is read by time lines"):
        wiregen.cython(wiregen.parse(head + twice, "t"))


def test_last_of_a_map_takes_the_last_entry_with_its_key() -> None:
    """last(KEY): a map's own semantics (a later entry replaces an earlier one), unlike first(KEY)."""
    text = "@proto envoy.data.accesslog.v3.accesslog_pb2\nAccessLogCommon.filter_state_objects last(k) v\n"
    generated = wiregen.cython(wiregen.parse(text, "t"))
    assert "elif" not in generated.split("scan_pair")[1].split("return OK")[0]
    assert "if not err and span_is(key, b'k', 1):\n                f.v = value" in generated
    assert "FOUND_v" not in generated


def test_a_refusing_table_refuses_what_it_does_not_list_and_reads_one_message_in_two_places() -> None:
    """@unknown refuse (the CheckRequest reader's mode): an unlisted field refuses the message; a prefix
    on a message line gives that message a reader of its own filling its own members."""
    text = (
        "@proto envoy.service.auth.v3.attribute_context_pb2\n@unknown refuse\n"
        "AttributeContext.source message source_\nAttributeContext.destination message destination_\n"
        "Peer.service text service\nPeer.principal text\n"
    )
    generated = wiregen.cython(wiregen.parse(text, "t"))
    assert "skip_field" not in generated
    assert generated.count("            err = E_UNKNOWN") == 3  # AttributeContext, and Peer per prefix
    assert "err = scan_source_Peer(span, depth - 1, f)" in generated
    assert "cdef int scan_destination_Peer(" in generated
    assert "    Span destination_service  # Peer.service" in generated
    assert "err = read_text(&p, end, &span)" in generated  # principal: UTF-8 checked, dropped
    skipping = text.replace("@unknown refuse", "@unknown skip").replace("Peer.principal text\n", "")
    assert "E_UNKNOWN" not in wiregen.cython(wiregen.parse(skipping, "t"))
    with pytest.raises(wiregen.TableError, match="text lines name a struct member"):
        wiregen.parse(skipping + "Peer.principal text\n", "t")  # a skipping table drops nothing it reads
