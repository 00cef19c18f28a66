"""The compiled ALS scanner (remixer/kit/native/als_scanner.pyx) against its reference, the Python
StreamReader.

Same input, two readers with their own telemetry parts: the batches (kinds and counts, records byte for
byte, entries), the memo keys and the running series must come out identical. And the scanner must
refuse exactly the bytes upb refuses (als_view_pb2.StreamAccessLogsMessage.FromString), never crash.
Hypothesis drives 10k generated Envoy messages through the equivalence test, and 10k random or mutated
byte strings through the refusal tests (which also compare both readers whenever upb accepts). None of
this skips: `make` builds the extension (pip install -e .), and a missing extension fails here.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remixer.kit.native import als_scanner
from remixer.v1 import als_view_pb2
from telemetry.app import TelemetryPart
from telemetry.edge import decoding
from telemetry.settings import CallEdgeSettings, TelemetrySettings
from tests.telemetry.harness import offline_part
from tests.telemetry.istio_proxy import VERSIONS, node_metadata, peer_object

IDENTIFIER = "sidecar~10.0.0.1~web-1.shop~shop.svc.cluster.local"


def _part(settings: TelemetrySettings) -> TelemetryPart:
    return offline_part(settings)


def _identity() -> Any:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.log_name = "http_envoy_accesslog"
    msg.identifier.node.id = IDENTIFIER
    meta = struct_pb2.Struct()
    meta.update(
        {
            "NAMESPACE": "shop",
            "WORKLOAD_NAME": "web",
            "SERVICE_ACCOUNT": "web",
            "INSTANCE_IPS": "10.0.0.1,fe80::1",  # a local address decides the side when the cluster does not
            "LABELS": {"app": "web", "version": "v1"},
        }
    )
    msg.identifier.node.metadata.CopyFrom(meta)
    return decoding.stream_identity(msg.identifier.SerializeToString())


@dataclass
class Pair:
    """The reference and the compiled reader, each on its own part (own aggregates), same identity."""

    name: str
    python_part: TelemetryPart
    compiled_part: TelemetryPart
    python: decoding.StreamReader
    compiled: decoding.CompiledStreamReader


CONFIGS: dict[str, dict[str, Any]] = {
    # The least record_max_field_bytes: the compiled JSON writer cuts long strings (random_text) as the
    # Python encoder does.
    "json": {"record_max_field_bytes": 64},
    "protobuf+destination+paths": {
        "record_encoding": "protobuf",
        "trust_domain": "example.org",
        "request_path_label": True,
        "path_templates": ["/api/{id}"],
        "record_max_field_bytes": 64,
    },
    "no-records": {"export_records": False, "max_series_per_metric": 3},
}


def make_pair(name: str) -> Pair:
    settings = TelemetrySettings(call_edges=CallEdgeSettings(enabled=False), **CONFIGS[name])
    python_part, compiled_part = _part(settings), _part(settings)
    identity = _identity()
    python = decoding.StreamReader(identity, python_part.readers)
    compiled = decoding.CompiledStreamReader(identity, compiled_part.readers)
    return Pair(name, python_part, compiled_part, python, compiled)


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    return [make_pair(name) for name in CONFIGS]


def _kind_view(kind: decoding.EntryKind) -> tuple[Any, ...]:
    return (kind.derived, kind.labels, kind.tcp_labels, kind.record_head, kind.flags, kind.response_code)


def _series(part: TelemetryPart) -> tuple[Any, ...]:
    http = {
        labels: (s.count, s.duration, s.duration_sum, s.request_bytes, s.request_sum, s.response_bytes,
                 s.response_sum)
        for labels, s in part.aggregates.http.items()
    }  # fmt: skip
    tcp = {labels: (s.sent, s.received, s.opened, s.closed) for labels, s in part.aggregates.tcp.items()}
    return http, tcp, dict(part.aggregates.overflowed)


def _read(reader: decoding.StreamReader, data: bytes) -> decoding.BatchResult | str:
    try:
        return reader.read_bytes(data)
    except decoding.MalformedMessage:
        return "malformed"


def _touched(counts: dict[decoding.EntryKind, int]) -> list[tuple[Any, ...]]:
    out = []
    for kind in counts:
        if kind.http is not None:
            s = kind.http
            out.append((s.count, s.duration, s.duration_sum, s.request_bytes, s.request_sum, s.response_bytes,
                        s.response_sum))  # fmt: skip
        if kind.tcp is not None:
            out.append((kind.tcp.sent, kind.tcp.received, kind.tcp.opened, kind.tcp.closed))
    return out


def assert_same(pair: Pair, data: bytes) -> decoding.BatchResult | str:
    """Both readers on the same message: same outcome, same batch, same memo, same running series."""
    memo_before = len(pair.python._kinds.kinds)
    expected = _read(pair.python, data)
    got = _read(pair.compiled, data)
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected, f"{pair.name}: {got!r} != {expected!r}"
        return got
    assert (got.kind, got.entries) == (expected.kind, expected.entries), pair.name
    assert [(_kind_view(k), n) for k, n in got.counts.items()] == [
        (_kind_view(k), n) for k, n in expected.counts.items()
    ], pair.name
    assert got.records == expected.records, pair.name
    # The memo keys (new ones are appended), and the series this batch added to, bit for bit.
    python_memo, compiled_memo = pair.python._kinds.kinds, pair.compiled._kinds.kinds
    assert len(compiled_memo) == len(python_memo), pair.name
    if len(python_memo) != memo_before:
        assert list(compiled_memo) == list(python_memo), pair.name
    assert _touched(got.counts) == _touched(expected.counts), pair.name
    assert len(pair.compiled_part.aggregates.http) == len(pair.python_part.aggregates.http), pair.name
    assert pair.compiled_part.aggregates.overflowed == pair.python_part.aggregates.overflowed, pair.name
    return got


def fresh(pairs: list[Pair]) -> list[Pair]:
    """Start over now and then so memos and series stay small (the comparisons stay cheap)."""
    for i, pair in enumerate(pairs):
        if len(pair.python._kinds.kinds) > 300:
            assert _series(pair.compiled_part) == _series(pair.python_part), pair.name
            pairs[i] = make_pair(pair.name)
    return pairs


# ---- generated Envoy messages ---------------------------------------------------------------------
#
# Hypothesis draws a seed per example and a seeded generator builds the messages: drawing each field
# through Hypothesis costs ~20 ms a message, this ~0.1 ms, so 10k messages run in seconds. A failure
# prints its seed; successive `random_message(rng)` calls on `rng = random.Random(seed)` rebuild them.

SPECIAL = [
    '"',
    "\\",
    "\x00",
    "\x1f",
    "\x7f",
    "\n",
    "\t",
    "é",
    "😀",
    "\u2028",
    "outbound|",
    "inbound|",
    "/",
    "?",
]
CLUSTERS = [
    "outbound|80||cart.shop.svc.cluster.local",
    "inbound|8080||",
    "PassthroughCluster",
    "outbound|9|v1|db",
]
FLAGS = ["upstream_request_timeout", "no_route_found", "rate_limited", "upstream_connection_failure"]


def random_text(rng: random.Random, max_len: int = 24) -> str:
    how = rng.random()
    if how < 0.4:
        return "".join(rng.choice(SPECIAL) for _ in range(rng.randint(0, 6)))
    if how < 0.8:
        # Any code point but surrogates (protobuf refuses those): ASCII, controls, 2-, 3- and 4-byte UTF-8.
        top = rng.choice([0x7F, 0x7FF, 0xFFFF, 0x10FFFF])
        chars = (rng.randint(0, top) for _ in range(rng.randint(0, max_len)))
        return "".join(chr(c) for c in chars if not 0xD800 <= c <= 0xDFFF)
    return "x" * rng.randint(55, 90)  # around the 64-character truncation of one config


def pick(rng: random.Random, pool: list[str]) -> str:
    """Mostly a few recurring values (label-deciding fields: memo hits), now and then a random one."""
    return rng.choice(pool) if rng.random() < 0.85 else random_text(rng)


def random_int64(rng: random.Random) -> int:
    # seconds * 1000 past 2**63 (1 in 50) refuses the batch when records are on: orjson's int range.
    return rng.choice([rng.randint(-5, 5_000)] * 46 + [2**53 + 1, -(2**53), rng.randint(-(2**63), 2**63 - 1)])


def random_int32(rng: random.Random) -> int:
    return rng.choice([rng.randint(-3, 999_999_999), rng.randint(-(2**31), 2**31 - 1), 0])


def random_uint64(rng: random.Random) -> int:
    # Sums past 2**64 are rare: no record holds them, so the whole batch is refused.
    return rng.choice([rng.randint(0, 5_000_000)] * 60 + [rng.randint(0, 2**63), 2**64 - 1])


def random_any(rng: random.Random) -> any_pb2.Any:
    """Peer objects as istio-proxy logs them (tests/telemetry/istio_proxy.py) and broken ones."""
    packed = any_pb2.Any()
    how = rng.randint(0, 4)
    if how == 0:
        peer = struct_pb2.Struct()
        peer.update({"NAMESPACE": rng.choice(["shop", "db"]), "WORKLOAD_NAME": rng.choice(["web", "api"])})
        packed.Pack(peer)
    elif how == 1:
        packed.type_url = "type.googleapis.com/google.protobuf.Struct"
        packed.value = b"\xff\x01garbage"
    elif how == 2:
        meta = node_metadata(rng.choice(["api", "db"]), "x", "10.0.0.2")
        packed.ParseFromString(peer_object(meta, rng.choice(VERSIONS))[1])
    elif how == 3:
        packed.Pack(wrappers_pb2.BytesValue(value=rng.randbytes(rng.randint(0, 24))))
    return packed


def fill_common(rng: random.Random, common: Any) -> None:
    if rng.random() < 0.8:
        common.upstream_cluster = pick(rng, CLUSTERS)
    for target in (common.start_time, common.duration, common.time_to_last_downstream_tx_byte):
        if rng.random() < 0.6:
            target.seconds = random_int64(rng) if rng.random() < 0.2 else rng.randint(0, 3)
            target.nanos = random_int32(rng)
    if rng.random() < 0.7:
        common.access_log_type = rng.choice([0, 6, 3, 1, rng.randint(0, 13), random_int32(rng)])
    if rng.random() < 0.15:
        for name in rng.sample(FLAGS, rng.randint(1, 2)):
            setattr(common.response_flags, name, True)
        if rng.random() < 0.3:
            common.response_flags.unauthorized_details.reason = 1
    if rng.random() < 0.15:
        tls = common.tls_properties
        tls.tls_sni_hostname = pick(rng, ["cart", "db.local"])
        if rng.random() < 0.7:
            tls.peer_certificate_properties.subject_alt_name.add(uri=pick(rng, ["spiffe://c/ns/shop/sa/web"]))
        if rng.random() < 0.5:
            tls.local_certificate_properties.subject_alt_name.add(
                uri=pick(rng, ["spiffe://c/ns/shop/sa/cart"])
            )
        if rng.random() < 0.3:
            tls.peer_certificate_properties.subject = "CN=web"
    if rng.random() < 0.3:
        address = common.upstream_remote_address.socket_address
        address.address, address.port_value = rng.choice(["10.0.0.9", ""]), rng.choice([80, 5432])
    keys = ["upstream_peer", "downstream_peer", "wasm.upstream_peer", "wasm.downstream_peer", "other", ""]
    for key in rng.sample(keys, rng.choice([0, 0, 0, 0, 1, 2, 3])):
        common.filter_state_objects[key].CopyFrom(random_any(rng))
    if rng.random() < 0.4:
        local = common.downstream_local_address.socket_address
        local.address, local.port_value = rng.choice(["10.0.0.1", "10.96.0.3", "fe80::1", ""]), 8080
    if rng.random() < 0.2:
        common.stream_id = pick(rng, ["a1", "b2"])


HEADER_VALUES = ["0", "14", "e30=", "Cg8KBE5BTUUSBxoFd2ViLTE=", "", "99"]
HEADER_VALUES += ["application/grpc", "application/grpc+proto", "application/grpc-web"]


def fill_headers(rng: random.Random, target: Any, names: list[str]) -> None:
    for name in rng.sample(names, rng.choice([0, 0, 0, 0, 1, 2, len(names)])):
        target[name] = pick(rng, HEADER_VALUES)


def random_http_entry(rng: random.Random) -> accesslog_pb2.HTTPAccessLogEntry:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    fill_common(rng, entry.common_properties)
    request = entry.request
    if rng.random() < 0.8:
        request.request_method = rng.choice([rng.randint(0, 9), rng.randint(0, 9), 10, random_int32(rng)])
    if rng.random() < 0.8:
        request.authority = pick(rng, ["cart:8080", "db", ""])
    for name in ("path", "user_agent", "request_id"):
        if rng.random() < 0.8:
            setattr(request, name, random_text(rng, 100))
    if rng.random() < 0.8:
        request.request_headers_bytes, request.request_body_bytes = random_uint64(rng), random_uint64(rng)
    fill_headers(
        rng, request.request_headers, ["x-envoy-peer-metadata", "grpc-status", "x-other", "content-type"]
    )
    response = entry.response
    if rng.random() < 0.8:
        response.response_code.value = rng.choice([200, 200, 200, 404, 503, 2**32 - 1])
    if rng.random() < 0.8:
        response.response_headers_bytes, response.response_body_bytes = random_uint64(rng), random_uint64(rng)
    fill_headers(rng, response.response_headers, ["x-envoy-peer-metadata", "grpc-status", "content-type"])
    fill_headers(rng, response.response_trailers, ["grpc-status", "grpc-message"])
    return entry


def random_tcp_entry(rng: random.Random) -> accesslog_pb2.TCPAccessLogEntry:
    entry = accesslog_pb2.TCPAccessLogEntry()
    fill_common(rng, entry.common_properties)
    if rng.random() < 0.8:
        entry.connection_properties.sent_bytes = random_uint64(rng)
        entry.connection_properties.received_bytes = random_uint64(rng)
    return entry


def random_message(rng: random.Random) -> bytes:
    msg = als_pb2.StreamAccessLogsMessage()
    if rng.random() < 0.1:
        msg.identifier.log_name = "http_envoy_accesslog"
    count = rng.choice([0, 1, 2, 3, 5, 8])
    if rng.random() < 0.2:
        msg.tcp_logs.log_entry.extend(random_tcp_entry(rng) for _ in range(count))
    else:
        msg.http_logs.log_entry.extend(random_http_entry(rng) for _ in range(count))
    data = msg.SerializeToString()
    if rng.random() < 0.1:  # legal but not canonical: a repeated oneof (merged), an unknown field
        data += rng.choice([data, b"\x12\x00", b"\x1a\x00", b"\xb8\x3e\x01"])
    return data


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )


@fuzz(2_500)
@given(st.integers(0, 2**64 - 1))
def test_compiled_reader_matches_the_python_reader(pairs: list[Pair], seed: int) -> None:
    # Four messages a seed, 10k in all: at one a seed, Hypothesis' own cost per example was a third of
    # this test's time.
    rng = random.Random(seed)
    for _ in range(4):
        data = random_message(rng)
        for pair in fresh(pairs):
            assert_same(pair, data)


# ---- refusing exactly what upb refuses ----------------------------------------------------------


def upb_accepts(data: bytes) -> bool:
    try:
        als_view_pb2.StreamAccessLogsMessage.FromString(data)
    except DecodeError:
        return False
    return True


def check_refusal(pairs: list[Pair], data: bytes) -> None:
    reason = als_scanner.validate(data)
    assert (reason is None) == upb_accepts(data), f"scanner: {reason!r} on {data!r}"
    for pair in fresh(pairs):
        outcome = assert_same(pair, data)
        if reason is not None:
            assert outcome == "malformed"
        elif pair.name == "json":
            assert_read_whole(pair, data, outcome)


def assert_read_whole(pair: Pair, data: bytes, outcome: decoding.BatchResult | str) -> None:
    """What upb accepts is read whole: every entry in its batch with its record (JSON that parses), the
    identifier an identity or a clear error (as the servicer decodes it); refused only when an entry
    cannot be encoded as a record."""
    message = als_view_pb2.StreamAccessLogsMessage.FromString(data)
    if message.identifier:
        with contextlib.suppress(decoding.MalformedMessage):
            decoding.stream_identity(message.identifier)
    if isinstance(outcome, str):
        with pytest.raises(decoding.MalformedMessage, match="cannot be encoded as a record"):
            pair.python.read_bytes(data)
        return
    which = message.WhichOneof("log_entries")
    logged = getattr(message, which).log_entry if which else []
    assert (outcome.kind, outcome.entries) == (which[:-5] if which else "http", len(logged))
    assert sum(outcome.counts.values()) <= outcome.entries
    assert len(outcome.records) == outcome.entries  # every entry has its record
    for _, value in outcome.records:
        json.loads(value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _group(number: int, depth: int) -> bytes:
    return _varint(number << 3 | 3) * depth + _varint(number << 3 | 4) * depth


def _in_common(payload: bytes) -> bytes:
    return _field(2, _field(1, _field(1, payload)))


def _base_message() -> bytes:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.node.id = IDENTIFIER
    for code, path in ((200, "/a"), (503, "/api/7?x")):
        entry = msg.http_logs.log_entry.add()
        entry.common_properties.upstream_cluster = "outbound|80||cart.shop.svc.cluster.local"
        entry.common_properties.duration.FromMilliseconds(12)
        entry.common_properties.filter_state_objects["upstream_peer"].Pack(struct_pb2.Struct())
        entry.request.path = path
        entry.request.request_headers["x-envoy-peer-metadata"] = "e30="
        entry.response.response_code.value = code
        entry.response.response_trailers["grpc-status"] = "14"
    return msg.SerializeToString()


BASE = _base_message()

EDGE_CASES = [
    b"",
    b"\x00\x00",  # field 0
    b"\x0e",  # wire type 6
    b"\x0f",  # wire type 7
    b"\x0c",  # end-group at the top
    b"\x08" + b"\xff" * 9 + b"\x7f",  # 10-byte varint: fine
    b"\x08" + b"\xff" * 10 + b"\x01",  # 11 bytes: refused
    b"\x88\x80\x80\x80\x00\x01",  # 5-byte tag
    b"\x88\x80\x80\x80\x80\x00\x01",  # 6-byte tag
    b"\xf8\xff\xff\xff\x0f\x01",  # tag at 2**32 - 1 ... fine
    b"\xf8\xff\xff\xff\x1f\x01",  # ... past 32 bits
    b"\x0a\xff\xff\xff\xff\x07",  # length past the end
    b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00",  # 10-byte zero length
    # Field number 0 inside an unknown group: upb skips it like any field, of every wire type.
    b"k\x00\x00l",
    b"k\x00l",  # ... its varint then runs into the end-group: refused
    b"k\x80\x00\x07l",  # a two-byte zero tag
    b"k\x01" + b"\x00" * 8 + b"l",
    b"k\x02\x01zl",
    b"k\x03\x04l",  # a group numbered 0, closed
    b"k\x04l",  # an end-group for 0 inside group 13: refused
    b"k\x05" + b"\x00" * 4 + b"l",
    _field(2, b"k\x00\x00l"),  # ... and one level down, in a known message
    _group(7, 100),
    _group(7, 101),
    _in_common(_group(99, 97)),
    _in_common(_group(99, 98)),
    _varint(7 << 3 | 3) + _varint(8 << 3 | 4),  # mismatched end-group
    _varint(7 << 3 | 3) + _varint(0 << 3 | 4),
    _varint(7 << 3 | 3),  # unterminated
    _field(2, b"\x0c"),  # end-group inside a length-delimited message
    _varint(2 << 3 | 3) + _varint(2 << 3 | 4),  # a message field as a group: unknown, skipped
    _in_common(_varint(15 << 3) + b"\x05"),  # a string field as a varint: unknown, skipped
    _in_common(_field(15, b"\xff")),
    _in_common(_field(15, b"\xc0\x80")),  # overlong NUL
    _in_common(_field(15, b"\xed\xa0\x80")),  # surrogate
    _in_common(_field(15, b"\xf4\x90\x80\x80")),  # past U+10FFFF
    _in_common(_field(15, b"\xe2\x82")),  # cut short
    _in_common(_field(15, "é😀\x00".encode())),
    _in_common(_field(999, b"\xff")),  # bytes of an unknown field are not UTF-8 checked
    _in_common(_field(21, _field(1, b"\xff"))),  # filter state key
    _in_common(_field(16, b"\xff")),  # response flags are bytes in the view
    _field(2, _field(1, _field(3, _field(13, _field(2, b"\x80"))))),  # a request header value
    _field(2, _field(1, _field(4, _field(5, _field(1, b"\xc3"))))),  # a trailer key
    _field(2, _field(1, _field(1, _field(23, b"\x08")))),  # truncated inside a nested message
    _field(2, _field(1, _field(1, b"\x08\x80"))) + b"\x01",  # a varint across its message's end
    _field(2, _field(1, b"")) + _field(3, _field(1, b"")) + _field(2, _field(1, b"")),  # oneof switches
    BASE + BASE,  # merged
    BASE + _field(2, b"") + _field(1, b"\x00"),
]


@pytest.mark.parametrize("data", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_edge_cases_are_refused_exactly_as_upb_refuses_them(pairs: list[Pair], data: bytes) -> None:
    check_refusal(pairs, data)


@fuzz(5_000)
@given(st.binary(max_size=600))
def test_random_bytes_are_refused_as_upb_refuses_them(pairs: list[Pair], data: bytes) -> None:
    check_refusal(pairs, data)


INSERTS = [b"\x00", b"\x0c", b"\x0b", b"\x80", b"\xff\xff", b"\x0e", b"\x1d\x00\x00\x00\x00", b"\xed\xa0\x80"]


@fuzz(6_000)
@given(st.data())
def test_mutated_messages_are_refused_as_upb_refuses_them(pairs: list[Pair], data: st.DataObject) -> None:
    base = bytearray(BASE)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        pos = data.draw(st.integers(0, len(base)), label="at")
        how = data.draw(st.integers(0, 4), label="how")
        if how == 0 and pos < len(base):
            base[pos] = data.draw(st.integers(0, 255), label="byte")
        elif how == 1:
            base[pos:pos] = data.draw(st.sampled_from(INSERTS), label="insert")
        elif how == 2:
            del base[pos : pos + data.draw(st.integers(1, 3), label="cut")]
        elif how == 3:
            length = data.draw(st.integers(1, 12), label="length")
            base[pos:pos] = base[pos : pos + length]  # duplicated fields merge (or break lengths)
        else:
            del base[pos:]  # cut short: a stream message Envoy did not finish
    check_refusal(pairs, bytes(base))


# ---- the JSON numbers ---------------------------------------------------------------------------


def _doubles() -> Iterator[float]:
    rng = random.Random(7)
    for _ in range(200_000):
        kind = rng.random()
        if kind < 0.4:
            x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        elif kind < 0.8:
            x = rng.randint(-(10**12), 10**12) * 1000 + rng.randint(-(2**31), 2**31 - 1) / 1e6
        else:
            x = rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30)
        if not (math.isnan(x) or math.isinf(x)):
            yield x
    yield from (0.0, -0.0, 1e-5, 1e-6, 1.5e-5, 1e15, 1e16, 9.999999e-5, 5e-324, 1.7976931348623157e308)


def test_durations_are_written_as_orjson_writes_floats() -> None:
    for x in _doubles():
        assert als_scanner.format_float(x) == orjson.dumps(x), x


def test_the_servicer_reads_with_the_compiled_scanner() -> None:
    part = make_pair("json").compiled_part
    assert decoding.COMPILED
    assert isinstance(part.readers.open(_identity()), decoding.CompiledStreamReader)


def test_without_the_extension_the_python_reader_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "als_scanner", None)
    part = _part(TelemetrySettings(call_edges=CallEdgeSettings(enabled=False)))
    assert type(part.readers.open(_identity())) is decoding.StreamReader


# ---- batches and streams past the scanner's small buffers ----------------------------------------


def _many_kinds(count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    msg = als_pb2.StreamAccessLogsMessage()
    for i in range(count):
        entry = msg.http_logs.log_entry.add()
        common = entry.common_properties
        common.upstream_cluster = f"outbound|80||svc-{i % 1500}.shop.svc.cluster.local"
        common.duration.FromNanoseconds(rng.randint(0, 10**10))
        entry.request.path = random_text(rng, 40)
        entry.request.request_headers_bytes = rng.randint(0, 10**6)
        entry.response.response_code.value = rng.choice([200, 404, 503])
    return msg.SerializeToString()


def test_a_batch_of_thousands_of_entries_and_kinds() -> None:
    pair = make_pair("json")
    for seed in range(3):  # the buffers grow, are dropped after the batch, and grow again
        result = assert_same(pair, _many_kinds(5_000, seed))
        assert not isinstance(result, str)
        assert result.entries == 5_000
        assert len(result.counts) >= 1_500


def test_a_full_memo_is_cleared_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "MAX_MEMO", 5)
    pair = make_pair("json")
    rng = random.Random(3)
    for _ in range(200):
        assert_same(pair, random_message(rng))
    assert len(pair.python._kinds.kinds) <= 5


def test_a_memo_cleared_between_messages_is_refilled_alike() -> None:
    # The scanner's raw-byte shortcut to kinds must not outlive the memo it shortcuts: after the memo
    # is emptied from outside, the same entries must rebuild the same memo keys on both readers.
    pair = make_pair("json")
    rng = random.Random(5)
    messages = [random_message(rng) for _ in range(40)]
    for data in messages:
        assert_same(pair, data)
    assert pair.compiled._kinds.kinds
    pair.python._kinds.kinds.clear()
    pair.compiled._kinds.kinds.clear()
    for data in messages:
        assert_same(pair, data)
    assert len(pair.compiled._kinds.kinds) == len(pair.python._kinds.kinds) > 0


def test_records_are_left_out_of_the_cyclic_gc() -> None:
    # Thousands of records wait for Kafka at any time; tracked, each GC pass would walk all of them.
    pair = make_pair("json")
    result = pair.compiled.read_bytes(_many_kinds(50, 1))
    assert len(result.records) == 50
    assert not any(gc.is_tracked(record) for record in result.records)
    assert all(isinstance(key, str | bytes | None) for key, _ in result.records)
