"""Bad input on the ALS stream: a clear gRPC status for the offending stream, other streams carry on,
nothing crashes. Hypothesis fuzzes both readers with Envoy-shaped messages here, with arbitrary and damaged
bytes in test_scanner.py."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remixer.kit.shipping.localfiles import RecordFiles
from telemetry.app import TelemetryPart
from telemetry.edge import decoding
from telemetry.settings import TelemetrySettings
from tests.telemetry import istio_proxy
from tests.telemetry.harness import RunningTelemetry, offline_part, running_telemetry

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"


def identifier(
    node_id: str = "sidecar~10.0.0.1~web-1.shop~shop.svc.cluster.local",
) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.log_name = "http_envoy_accesslog"
    msg.identifier.node.id = node_id
    meta = struct_pb2.Struct()
    meta.update({"NAMESPACE": "shop", "WORKLOAD_NAME": "web", "LABELS": {"app": "web"}})
    msg.identifier.node.metadata.CopyFrom(meta)
    return msg


def http_message(entries: Sequence[accesslog_pb2.HTTPAccessLogEntry], *, first: bool = False) -> bytes:
    msg = identifier() if first else als_pb2.StreamAccessLogsMessage()
    msg.http_logs.log_entry.extend(entries)
    return msg.SerializeToString()


def entry(code: int = 200, cluster: str = "outbound|80||cart.shop.svc.cluster.local", **request: object):
    e = accesslog_pb2.HTTPAccessLogEntry()
    e.common_properties.upstream_cluster = cluster
    e.response.response_code.value = code
    e.request.request_method = base_pb2.GET
    for key, value in request.items():
        if isinstance(value, dict):
            getattr(e.request, key).update(value)
        else:
            setattr(e.request, key, value)
    return e


async def send(tel: RunningTelemetry, messages: Sequence[bytes]) -> grpc.aio.AioRpcError | None:
    async with grpc.aio.insecure_channel(tel.target) as channel:
        call = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)()
        try:
            for message in messages:
                await call.write(message)
            await call.done_writing()
            await call
        except grpc.aio.AioRpcError as exc:
            return exc
    return None


def received(tel: RunningTelemetry) -> float:
    return tel.value("remixer_telemetry_entries_received_total", {"kind": "http"})


async def test_garbage_is_refused_and_other_streams_carry_on(tmp_path: Path) -> None:
    async with running_telemetry(tmp_path) as tel:
        error = await send(tel, [b"\xff\xfe garbage \x00\x01"])
        assert error is not None
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "StreamAccessLogsMessage" in (error.details() or "")
        assert tel.value("remixer_telemetry_messages_malformed_total", {"reason": "undecodable"}) == 1
        # A good stream after (and the server) is unaffected.
        assert await send(tel, [http_message([entry()], first=True), http_message([entry(404)] * 3)]) is None
        assert received(tel) == 4


async def test_a_stream_without_identifier_is_refused(tmp_path: Path) -> None:
    async with running_telemetry(tmp_path) as tel:
        error = await send(tel, [http_message([entry()])])
        assert error is not None
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "identifier" in (error.details() or "")
        assert tel.value("remixer_telemetry_messages_malformed_total", {"reason": "no_identifier"}) == 1
        assert received(tel) == 0


async def test_garbage_midstream_keeps_what_came_before(tmp_path: Path) -> None:
    async with running_telemetry(tmp_path) as tel:
        good = http_message([entry()] * 5, first=True)
        error = await send(tel, [good, good[: len(good) // 2]])  # truncated second message
        assert error is not None
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert received(tel) == 5


async def test_odd_but_valid_input_is_counted_with_unknown_labels(tmp_path: Path) -> None:
    async with running_telemetry(tmp_path) as tel:
        bare = accesslog_pb2.HTTPAccessLogEntry()  # every optional field missing
        huge_header = entry(request_headers={"x-envoy-peer-metadata": "A" * 1_000_000})
        huge_path = entry(path="/p/" + "x" * 1_000_000)
        # An unknown field (number 999, varint) appended to a valid message: parsers must skip it.
        unknown = http_message([entry()]) + b"\xb8\x3e\x01"
        assert await send(tel, [http_message([bare, huge_header, huge_path], first=True), unknown]) is None
        assert received(tel) == 4
        # The bare entry says nothing of its side (no cluster, no direction in the log name): it is counted
        # and shipped as a record, but books no istio_* series rather than a guessed reporter.
        assert {s["reporter"] for s in tel.samples("istio_requests_total")} == {"source"}
        assert sum(float(s["__value__"]) for s in tel.samples("istio_requests_total")) == 3
        assert tel.value("remixer_telemetry_label_misses_total", {"label": "reporter"}) == 1
        # One entry (the bare one) names no destination service.
        assert tel.value("remixer_telemetry_label_misses_total", {"label": "destination_service"}) == 1
        # The record of the 1 MB path is truncated, not refused.
        sink = tel.hub.sink("access-logs")
        await tel.hub.close()
        # Kafka off: the records are in the local record files, one JSON record a line.
        assert isinstance(sink.spool, RecordFiles)
        lines = [line for f in sink.spool.files() for line in f.read_bytes().splitlines()]
        paths = [len(json.loads(line)["path"]) for line in lines]
        assert max(paths) == TelemetrySettings().record_max_field_bytes


# ---- fuzzing the decoder (no network: >= 10k messages in seconds) -------------------------------


@dataclass
class Readers:
    """Both ALS readers on the same stream, each with its own part (own memo and running series): the
    Python one (upb parses, the reference) and the compiled scanner the server uses
    (remixer/kit/native/als_scanner.pyx)."""

    python: decoding.StreamReader
    compiled: decoding.CompiledStreamReader


def _part() -> TelemetryPart:
    return offline_part(TelemetrySettings(call_edges={"enabled": False}))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reader() -> Readers:
    identity = decoding.stream_identity(identifier().identifier.SerializeToString())
    python = decoding.StreamReader(identity, _part().readers)
    compiled = decoding.CompiledStreamReader(identity, _part().readers)
    return Readers(python, compiled)


Outcome = tuple[str, int, list[tuple[Any, ...]], list[tuple[bytes | None, bytes]]] | None


def _outcome(reader: decoding.StreamReader, data: bytes) -> Outcome:
    """A batch as plain values (None: refused as malformed); any other exception fails the test."""
    try:
        result = reader.read_bytes(data)
    except decoding.MalformedMessage:
        return None
    counted = [(k.labels, k.flags, k.response_code, n) for k, n in result.counts.items()]
    return result.kind, result.entries, counted, result.records


def _decode(readers: Readers, data: bytes) -> Outcome:
    """Both readers on the same bytes: they refuse what upb refuses, and agree on what it accepts."""
    try:
        message = decoding.parse_message(data)
    except decoding.MalformedMessage:
        message = None
    expected = _outcome(readers.python, data)
    got = _outcome(readers.compiled, data)
    assert got == expected
    if message is None:
        assert expected is None
        return None
    if message.identifier:  # the servicer decodes it: a clear error or an identity, nothing else
        with contextlib.suppress(decoding.MalformedMessage):
            decoding.stream_identity(message.identifier)
    if expected is None:  # upb parsed it, the reader refused it: only for a record it cannot encode
        with pytest.raises(decoding.MalformedMessage, match="cannot be encoded as a record"):
            readers.python.read_bytes(data)
        return None
    kind, entries, counted, records = expected
    which = message.WhichOneof("log_entries")
    logged = getattr(message, which).log_entry if which else []
    assert (kind, entries) == (which[:-5] if which else "http", len(logged))
    assert sum(n for *_, n in counted) <= entries  # periodic and start logs are shipped, not counted
    assert len(records) == entries  # every entry has its record
    for _, value in records:
        json.loads(value)
    return expected


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )


# Envoy-shaped messages here; arbitrary and damaged bytes through both readers against upb, with the
# same checks as _decode, in test_scanner.py (test_random_bytes_..., test_mutated_messages_...).


texts = st.text(max_size=30)
entries = st.builds(
    lambda cluster, authority, code, path, flags, header, tls_uri, kind: _entry(
        cluster, authority, code, path, flags, header, tls_uri, kind
    ),
    st.one_of(
        texts, st.sampled_from(["outbound|80||a.b.svc.cluster.local", "inbound|80||", "PassthroughCluster"])
    ),
    texts,
    st.integers(0, 2**32 - 1),
    st.text(max_size=80),
    st.booleans(),
    st.one_of(st.none(), texts, st.just("e30=")),
    st.one_of(st.none(), texts),
    st.integers(0, 20),
)


def _entry(cluster, authority, code, path, flags, header, tls_uri, kind):  # type: ignore[no-untyped-def]
    e = accesslog_pb2.HTTPAccessLogEntry()
    c = e.common_properties
    c.upstream_cluster = cluster
    c.access_log_type = kind % 14
    e.request.authority = authority
    e.request.path = path
    e.response.response_code.value = code
    if flags:
        c.response_flags.upstream_connection_failure = True
        c.response_flags.unauthorized_details.reason = 1
    if header is not None:
        e.request.request_headers["x-envoy-peer-metadata"] = header
        e.response.response_headers["x-envoy-peer-metadata"] = header
        e.response.response_trailers["grpc-status"] = header[:2]
    if tls_uri is not None:
        c.tls_properties.peer_certificate_properties.subject_alt_name.add(uri=tls_uri)
        c.tls_properties.tls_sni_hostname = tls_uri
    return e


@fuzz(2000)
@given(st.lists(entries, min_size=1, max_size=8), st.booleans())
def test_fuzz_structured_messages(
    reader: Readers, batch: list[accesslog_pb2.HTTPAccessLogEntry], tcp: bool
) -> None:
    msg = als_pb2.StreamAccessLogsMessage()
    if tcp:
        for e in batch:
            t = msg.tcp_logs.log_entry.add()
            t.common_properties.CopyFrom(e.common_properties)
            t.connection_properties.sent_bytes = len(e.request.path)
    else:
        msg.http_logs.log_entry.extend(batch)
    outcome = _decode(reader, msg.SerializeToString())
    assert outcome is not None  # a message Envoy could send is never refused
    assert outcome[:2] == ("tcp" if tcp else "http", len(batch))


async def test_a_message_of_too_many_entries_is_refused_and_nothing_of_it_kept(tmp_path: Path) -> None:
    async with running_telemetry(tmp_path, TelemetrySettings(max_entries_per_message=100)) as tel:
        error = await send(tel, [http_message([entry()] * 101, first=True)])
        assert error is not None
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_entries_per_message" in (error.details() or "")
        assert tel.value("remixer_telemetry_messages_malformed_total", {"reason": "too_many_entries"}) == 1
        assert tel.value("remixer_telemetry_records_exported_total") == 0
        assert received(tel) == 0  # refused before any entry was read: not in the metrics either
        assert await send(tel, [http_message([entry()] * 100, first=True)]) is None
        assert tel.value("remixer_telemetry_records_exported_total") == 100


def peer_header(workload: str, padding: int = 0) -> str:
    """x-envoy-peer-metadata as istio-proxy's metadata exchange sends it (istio/proxy
    source/extensions/filters/http/peer_metadata/filter.cc): the base64 of the peer's node-metadata
    Struct. `padding` adds a label value of that many bytes, as a pod with many labels would."""
    meta = struct_pb2.Struct()
    labels = {"app": workload, "version": "v1", **({"note": "n" * padding} if padding else {})}
    meta.update(
        {"NAMESPACE": "shop", "WORKLOAD_NAME": workload, "CLUSTER_ID": "Kubernetes", "LABELS": labels}
    )
    return base64.b64encode(meta.SerializeToString()).decode()


def with_header_peer(workload: str, padding: int) -> tuple[accesslog_pb2.HTTPAccessLogEntry, int]:
    """An outbound entry whose server's metadata came back in the response header; its size."""
    e = entry()
    e.response.response_headers[decoding.PEER_HEADER] = value = peer_header(workload, padding)
    return e, len(value)


def with_filter_state_peer(workload: str, padding: int) -> tuple[accesslog_pb2.HTTPAccessLogEntry, int]:
    """An outbound entry with the upstream_peer object istio-proxy 1.28 logs (tests/telemetry/istio_proxy.py
    cites the sources); `padding` lengthens the pod name the object carries. Its size."""
    meta = {
        "NAME": f"{workload}-" + "x" * padding,
        "NAMESPACE": "shop",
        "WORKLOAD_NAME": workload,
        "CLUSTER_ID": "Kubernetes",
        "LABELS": {
            "app": workload,
            "version": "v1",
            "service.istio.io/canonical-name": workload,
            "service.istio.io/canonical-revision": "v1",
        },
    }
    e = entry()
    istio_proxy.set_peer(e.common_properties, "upstream", meta, "1.28")
    return e, len(e.common_properties.filter_state_objects["upstream_peer"].SerializeToString())


@pytest.mark.parametrize("peered", [with_header_peer, with_filter_state_peer], ids=["header", "filter-state"])
async def test_peer_metadata_beyond_the_size_cap_is_ignored_and_counted(
    tmp_path: Path, peered: Callable[[str, int], tuple[accesslog_pb2.HTTPAccessLogEntry, int]]
) -> None:
    (small, small_size), (large, large_size) = peered("cart-v1", 0), peered("cart-v2", 200)
    assert small_size <= 256 < large_size
    async with running_telemetry(tmp_path, TelemetrySettings(max_peer_metadata_bytes=256)) as tel:
        assert await send(tel, [http_message([small, large], first=True)]) is None
        workloads = {
            s["destination_workload"]: float(s["__value__"]) for s in tel.samples("istio_requests_total")
        }
        assert workloads == {"cart-v1": 1, "unknown": 1}  # cart-v2 was never read
        assert tel.value("remixer_telemetry_label_misses_total", {"label": "destination_workload"}) == 1
    async with running_telemetry(tmp_path / "wide", TelemetrySettings(max_peer_metadata_bytes=1024)) as tel:
        assert await send(tel, [http_message([large], first=True)]) is None
        assert [s["destination_workload"] for s in tel.samples("istio_requests_total")] == ["cart-v2"]


@settings(max_examples=300, deadline=None)
@given(
    codes=st.lists(st.integers(0, 599), max_size=300),
    first=st.booleans(),
    tcp=st.booleans(),
)
def test_count_entries_agrees_with_the_protobuf_parser(codes: list[int], first: bool, tcp: bool) -> None:
    msg = identifier() if first else als_pb2.StreamAccessLogsMessage()
    if tcp:
        msg.tcp_logs.log_entry.extend(accesslog_pb2.TCPAccessLogEntry() for _ in codes)
    else:
        msg.http_logs.log_entry.extend(entry(code) for code in codes)
    data = msg.SerializeToString()
    assert decoding.count_entries(data) == len(codes)
    # Unknown fields (Envoy newer than us) are skipped, not counted.
    assert decoding.count_entries(data + b"\xb8\x3e\x01") == len(codes)
