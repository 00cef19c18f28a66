"""The compiled CheckRequest reader (remixer/kit/native/check_keys.pyx) against upb.

read_input must give exactly what check_input reads from the upb message, or None (then the handler
takes the upb path); a cache key must be None whenever upb refuses the bytes, and equal keys must mean
equal values for every attribute the key was built for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.core import attributes
from policy.core.checks import record_fields
from policy.edge import grpc_authz
from policy.structs import CheckInput
from remixer.kit.native import wiregen
from remixer.kit.native.check_keys import KeyReader, log_fields, read_input  # built by `pip install -e .`

JWT = "x-jwt-payload"
# Every attribute family the policy vocabulary has, with names the generated requests use.
ATTRIBUTES = (
    *attributes._FIELDS,
    "request.headers.x-user",
    "request.headers.user-agent",
    "request.query.page",
    "request.jwt.sub",
    "source.labels.app",
    "destination.labels.version",
    "context.tenant",
)
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))

# Small alphabets: generated pairs share values often, so equal keys actually occur.
texts = st.one_of(
    st.sampled_from(["", "a", "GET", "/a?page=1", "é", "x-user", "spiffe://td/ns/n/sa/s", "URI=spiffe://x"]),
    st.text(max_size=12),
)
names = st.sampled_from(["x-user", "user-agent", "x-request-id", "x-forwarded-client-cert", JWT, "app", ""])
maps = st.dictionaries(names, texts, max_size=4)


@st.composite
def check_requests(draw: Any) -> Any:
    msg = external_auth_pb2.CheckRequest()
    attrs = msg.attributes
    for peer, port in ((attrs.source, False), (attrs.destination, True)):
        if draw(st.booleans()):
            peer.address.socket_address.address = draw(texts)
            if port:
                peer.address.socket_address.port_value = draw(st.sampled_from([0, 80, 8080, 2**32 - 1]))
        peer.principal = draw(texts)
        peer.service = draw(texts)
        peer.labels.update(draw(maps))
        if draw(st.booleans()):
            peer.certificate = draw(texts)
    attrs.context_extensions.update(draw(maps))
    http = attrs.request.http
    http.id, http.method, http.path, http.host, http.scheme = (draw(texts) for _ in range(5))
    http.headers.update(draw(maps))
    if draw(st.booleans()):
        http.protocol, http.query, http.fragment, http.body = "HTTP/1.1", draw(texts), draw(texts), "b"
        http.size = draw(st.integers(0, 2**40))
        http.raw_body = draw(st.binary(max_size=4))
        attrs.request.time.seconds = draw(st.integers(0, 2**40))
        attrs.tls_session.sni = draw(texts)
        attrs.metadata_context.SetInParent()  # Envoy sends it empty unless told to fill it
    return msg


def _fields(req: CheckInput) -> dict[str, Any]:
    return {
        f.name: dict(v) if hasattr(v, "items") else v
        for f in dataclasses.fields(CheckInput)
        if f.name != "memo" and (v := getattr(req, f.name)) is not None
    }


def _upb(data: bytes) -> CheckInput | None:
    try:
        return grpc_authz.check_input(external_auth_pb2.CheckRequest.FromString(data))
    except DecodeError:
        return None


@FUZZ
@given(first=check_requests(), second=check_requests())
def test_read_input_and_decision_records_read_what_upb_reads(first: Any, second: Any) -> None:
    one = first.SerializeToString()
    # One message, and two in a row: upb merges them (repeated fields append, the last value wins).
    for data in (one, one + second.SerializeToString()):
        expected = _upb(data)
        assert expected is not None
        values = read_input(data)
        assert values is not None, "an Envoy-shaped request must not need the upb path"
        assert _fields(CheckInput(*values)) == _fields(expected)
        assert grpc_authz.wire_record_fields(data) == record_fields(expected)


def test_decision_records_of_damaged_bytes_still_have_fields() -> None:
    data = _with(lambda m: m.attributes.request.http.header_map.headers.add(key="k", value="v"))
    assert grpc_authz.wire_record_fields(data)[-2:] == ("GET", "/a")  # read by upb
    assert grpc_authz.wire_record_fields(b"\xff") == record_fields(CheckInput())


@FUZZ
@given(msg=check_requests(), cut=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=6))
def test_damaged_bytes_are_refused_or_read_as_upb_reads_them(msg: Any, cut: int, junk: bytes) -> None:
    data = msg.SerializeToString()
    cut %= len(data) + 1
    reader = KeyReader(ATTRIBUTES, jwt_header=JWT)
    for damaged in (data[:cut], data[:cut] + junk + data[cut:], data[:cut] + junk):
        expected = _upb(damaged)
        values = read_input(damaged)
        if expected is None:
            assert values is None
            assert reader.key(damaged) is None
        elif values is not None:
            assert _fields(CheckInput(*values)) == _fields(expected)
        if values is None:
            assert reader.key(damaged) is None  # both walk the same way


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(first=check_requests(), second=check_requests(), attribute=st.sampled_from(ATTRIBUTES))
def test_equal_keys_mean_equal_attribute_values(first: Any, second: Any, attribute: str) -> None:
    reader = KeyReader((attribute,), jwt_header=JWT)
    get = attributes.getter(attribute, jwt_header=JWT)
    one, two = first.SerializeToString(), second.SerializeToString()
    # Alone, and merged both ways (repeated fields and map keys: the last one wins).
    for a, b in ((one, two), (one + two, one), (one + two, two + one)):
        left, right = _upb(a), _upb(b)
        assert left is not None
        assert right is not None
        if reader.key(a) == reader.key(b):
            assert get(left) == get(right)
        if get(left) != get(right):
            assert reader.key(a) != reader.key(b)


@FUZZ
@given(msg=check_requests(), request_id=texts, other=texts)
def test_fields_no_rule_reads_leave_the_key_alone(msg: Any, request_id: str, other: str) -> None:
    reader = KeyReader(("request.path", "request.headers.x-user"), jwt_header=JWT)
    before = reader.key(msg.SerializeToString())
    http = msg.attributes.request.http
    http.id = request_id
    http.headers["x-request-id"] = other
    msg.attributes.source.address.socket_address.port_value = 41234
    assert reader.key(msg.SerializeToString()) == before


def _envoy_request() -> Any:
    msg = external_auth_pb2.CheckRequest()
    attrs = msg.attributes
    attrs.source.address.socket_address.address = "10.0.0.1"
    attrs.destination.address.socket_address.port_value = 8080
    attrs.request.http.method = "GET"
    attrs.request.http.path = "/a"
    attrs.request.http.headers["x-user"] = "u"
    return msg


def _with(change: Any) -> bytes:
    msg = _envoy_request()
    change(msg)
    return bytes(msg.SerializeToString())


@pytest.mark.parametrize(
    "data",
    [
        # A oneof case the reader does not follow: it would clear socket_address.
        _with(lambda m: m.attributes.source.address.pipe.SetInParent()),
        _with(lambda m: setattr(m.attributes.destination.address.socket_address, "named_port", "http")),
        # Filled metadata, raw header maps: read by upb, not by this reader.
        _with(lambda m: m.attributes.metadata_context.filter_metadata["f"].update({"k": "v"})),
        _with(lambda m: m.attributes.request.http.header_map.headers.add(key="x-user", value="u")),
        # An unknown field (a newer Envoy's).
        _with(lambda m: None) + b"\xf8\x07\x01",
    ],
    ids=["pipe", "named_port", "metadata", "header_map", "unknown_field"],
)
def test_shapes_beyond_the_reader_take_the_upb_path(data: bytes) -> None:
    assert _upb(data) is not None
    assert read_input(data) is None
    assert KeyReader(ATTRIBUTES, jwt_header=JWT).key(data) is None


def test_invalid_utf8_anywhere_is_refused() -> None:
    data = _with(lambda m: setattr(m.attributes.request.http, "fragment", "\u00e9"))
    broken = data.replace("\u00e9".encode(), b"\xc3\x28")
    assert _upb(broken) is None
    assert read_input(broken) is None
    assert KeyReader(ATTRIBUTES, jwt_header=JWT).key(broken) is None


def test_too_many_map_entries_for_a_key_make_the_reader_unusable() -> None:
    assert KeyReader(ATTRIBUTES, jwt_header=JWT).usable
    many = [f"request.headers.h{i}" for i in range(100)]
    assert not KeyReader(many, jwt_header=JWT).usable
    assert KeyReader(many, jwt_header=JWT).key(_with(lambda m: None)) is None


# ---- the edges of a reader that refuses what its table does not list ---------------------------------

CHECK_TABLE = Path(wiregen.__file__).with_name("check_fields.txt")


def _walked() -> list[tuple[tuple[int, ...], Descriptor]]:
    """Every message the reader walks (map entries and the must-be-empty metadata included), with the
    field numbers that lead to it from CheckRequest: taken from its table and the descriptors."""
    lines = wiregen.load(CHECK_TABLE).lines
    out: list[tuple[tuple[int, ...], Descriptor]] = []

    def walk(message: Descriptor, path: tuple[int, ...]) -> None:
        out.append((path, message))
        for line in lines:
            if line.message is message and line.reader == "message":
                walk(line.field.message_type, (*path, line.field.number))
            elif line.message is message and line.reader in ("entries", "empty"):
                out.append(((*path, line.field.number), line.field.message_type))

    walk(external_auth_pb2.CheckRequest.DESCRIPTOR, ())
    return out


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def _nest(path: tuple[int, ...], payload: bytes) -> bytes:
    """`payload` as the content of the message at `path` (a CheckRequest that merges into another)."""
    for number in reversed(path):
        payload = _varint(number << 3 | 2) + _varint(len(payload)) + payload
    return payload


def _other_wire_type(field: FieldDescriptor) -> bytes:
    """The field with a wire type it is not declared with: upb takes it for an unknown field."""
    if wiregen.wire_type(field) == 2:
        return _varint(field.number << 3) + b"\x01"
    return _varint(field.number << 3 | 2) + b"\x00"


WALKED = _walked()


def test_the_walk_covers_every_message_of_the_table() -> None:
    walked = {message.name for _, message in WALKED}
    assert {line.message.name for line in wiregen.load(CHECK_TABLE).lines} <= walked
    assert {"HeadersEntry", "LabelsEntry", "ContextExtensionsEntry", "Metadata"} <= walked


@pytest.mark.parametrize(("path", "message"), WALKED, ids=[f"{m.name}@{p}" for p, m in WALKED])
def test_a_field_the_table_does_not_list_is_refused_in_every_message(
    path: tuple[int, ...], message: Descriptor
) -> None:
    base = _with(lambda m: None)
    plain = base + _nest(path, b"")  # the same place, nothing unknown in it: read
    expected = _upb(plain)
    values = read_input(plain)
    assert expected is not None
    assert values is not None
    assert _fields(CheckInput(*values)) == _fields(expected)
    assert 127 not in message.fields_by_number
    for extra in (b"\xf8\x07\x01", _other_wire_type(message.fields[0])):  # field 127; a known one
        data = base + _nest(path, extra)
        assert _upb(data) is not None, "upb keeps an unknown field and reads the rest"
        assert read_input(data) is None
        assert log_fields(data) is None
        assert KeyReader(ATTRIBUTES, jwt_header=JWT).key(data) is None


def test_every_truncation_is_refused_or_read_as_upb_reads_it() -> None:
    msg = _envoy_request()
    msg.attributes.source.labels["app"] = "a"
    msg.attributes.context_extensions["tenant"] = "t"
    msg.attributes.request.time.seconds = 1_700_000_000
    data = msg.SerializeToString()
    reader = KeyReader(ATTRIBUTES, jwt_header=JWT)
    read = 0
    for cut in range(len(data)):
        damaged = data[:cut]
        expected, values = _upb(damaged), read_input(damaged)
        if expected is None:
            assert values is None
            assert log_fields(damaged) is None
            assert reader.key(damaged) is None
        elif values is not None:
            read += 1
            assert _fields(CheckInput(*values)) == _fields(expected)
    assert read >= 1  # a cut between top-level fields is a whole, smaller request
