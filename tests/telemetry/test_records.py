"""Access-log records: JSON by default, protobuf optional, both exactly the documented schema."""

from __future__ import annotations

import json

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from remixer.v1 import access_record_pb2
from telemetry.core import records
from telemetry.edge import decoding
from telemetry.settings import CallEdgeSettings, TelemetrySettings
from tests.telemetry.harness import offline_part

SCHEMA = {f.name for f in access_record_pb2.AccessRecord.DESCRIPTOR.fields}


def read_records(encoding: str) -> list[tuple[bytes | None, bytes]]:
    settings = TelemetrySettings(record_encoding=encoding, call_edges=CallEdgeSettings(enabled=False))  # type: ignore[arg-type]
    part = offline_part(settings)
    first = als_pb2.StreamAccessLogsMessage()
    first.identifier.log_name = "http_envoy_accesslog"
    first.identifier.node.id = "sidecar~10.0.0.1~web-1.shop~shop.svc.cluster.local"
    http = accesslog_pb2.HTTPAccessLogEntry()
    http.common_properties.upstream_cluster = "outbound|8080||cart.shop.svc.cluster.local"
    http.common_properties.start_time.FromMilliseconds(1_700_000_000_123)
    http.common_properties.duration.FromMilliseconds(42)
    http.common_properties.response_flags.upstream_request_timeout = True
    http.request.authority = "cart:8080"
    http.request.path = "/cart/7"
    http.request.request_id = "req-1"
    http.request.request_method = 3
    http.request.request_headers_bytes = 100
    http.response.response_code.value = 504
    http.response.response_body_bytes = 24
    first.http_logs.log_entry.append(http)
    reader = part.readers.open(decoding.stream_identity(first.identifier.SerializeToString()))
    result = reader.read(decoding.parse_message(first.SerializeToString()))
    tcp = als_pb2.StreamAccessLogsMessage()
    entry = tcp.tcp_logs.log_entry.add()
    entry.common_properties.upstream_cluster = "outbound|5432||db.shop.svc.cluster.local"
    entry.connection_properties.sent_bytes = 10
    entry.connection_properties.received_bytes = 20
    more = reader.read(decoding.parse_message(tcp.SerializeToString()))
    return result.records + more.records


def test_json_records_follow_the_schema() -> None:
    (http_key, http_value), (tcp_key, tcp_value) = read_records("json")
    http, tcp = json.loads(http_value), json.loads(tcp_value)
    assert http_key == b"cart.shop.svc.cluster.local"
    assert tcp_key == b"db.shop.svc.cluster.local"
    assert set(http) <= SCHEMA
    assert set(tcp) <= SCHEMA
    assert http["request_id"] == "req-1"
    assert http["method"] == "POST"
    assert http["response_code"] == 504
    assert http["response_flags"] == "UT"
    assert http["authority"] == "cart:8080"
    assert http["start_time_ms"] == 1_700_000_000_123
    assert http["duration_ms"] == 42
    assert http["request_bytes"] == 100
    assert http["reporter"] == "source"
    assert http["destination_service"] == "cart.shop.svc.cluster.local"
    assert http["source_workload_namespace"] == "shop"
    assert (tcp["kind"], tcp["sent_bytes"], tcp["received_bytes"]) == ("tcp", 10, 20)
    assert "request_id" not in tcp


def test_json_records_write_the_kind_fields_then_the_entry_fields_in_schema_order() -> None:
    fields = access_record_pb2.AccessRecord.DESCRIPTOR.fields_by_name
    for _, value in read_records("json"):
        keys = list(json.loads(value))
        parts = [fields[k].GetOptions().Extensions[access_record_pb2.part] for k in keys]
        assert parts == sorted(parts)  # KIND (1) fields, then ENTRY (2) fields
        numbers = [fields[k].number for k in keys]
        head = parts.count(access_record_pb2.KIND)
        assert numbers[:head] == sorted(numbers[:head])
        assert numbers[head:] == sorted(numbers[head:])


def test_long_strings_are_cut_in_every_field_and_numbers_past_their_type_refuse_the_record() -> None:
    encoder = records.RecordEncoder("json", 64)
    entry = {"start_time_ms": 1, "duration_ms": 0.5, "request_id": "r" * 100, "method": "GET",
             "path": "é" * 70, "user_agent": "", "request_bytes": 0, "response_bytes": 2**64 - 1}  # fmt: skip
    record = json.loads(encoder.encode(b"{", "http", entry))
    assert (record["request_id"], record["path"]) == ("r" * 64, "é" * 64)
    for name, value in (("start_time_ms", 2**63), ("start_time_ms", -(2**63) - 1), ("request_bytes", -1)):
        for other in (encoder, records.RecordEncoder("protobuf", 64)):
            with pytest.raises(ValueError, match=name):
                other.encode(b"", "http", {**entry, name: value})


def test_protobuf_records_decode_to_the_same_values() -> None:
    (_, http_value), (_, tcp_value) = read_records("protobuf")
    http = access_record_pb2.AccessRecord.FromString(http_value)
    assert (http.request_id, http.response_code, http.path, http.kind) == ("req-1", 504, "/cart/7", "http")
    assert http.destination_service == "cart.shop.svc.cluster.local"
    tcp = access_record_pb2.AccessRecord.FromString(tcp_value)
    assert (tcp.kind, tcp.sent_bytes) == ("tcp", 10)


def test_tls_peer_san_and_filter_state_peer_feed_the_labels() -> None:
    from google.protobuf import any_pb2, struct_pb2

    part = offline_part(TelemetrySettings(call_edges=CallEdgeSettings(enabled=False)))
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.log_name = "http_envoy_accesslog"
    msg.identifier.node.id = "sidecar~10.0.0.2~cart-1.shop~shop.svc.cluster.local"
    msg.identifier.node.metadata.update({"WORKLOAD_NAME": "cart", "LABELS": {"app": "cart"}})
    e = msg.http_logs.log_entry.add()
    e.common_properties.upstream_cluster = "inbound|8080||"
    e.request.authority = "cart:8080"
    e.response.response_code.value = 200
    tls = e.common_properties.tls_properties
    tls.peer_certificate_properties.subject_alt_name.add(uri="spiffe://cluster.local/ns/shop/sa/web")
    tls.local_certificate_properties.subject_alt_name.add(uri="spiffe://cluster.local/ns/shop/sa/cart")
    peer = struct_pb2.Struct()
    peer.update({"NAMESPACE": "shop", "WORKLOAD_NAME": "web", "LABELS": {"app": "web"}})
    packed = any_pb2.Any()
    packed.Pack(peer)
    e.common_properties.filter_state_objects["downstream_peer"].CopyFrom(packed)
    reader = part.readers.open(decoding.stream_identity(msg.identifier.SerializeToString()))
    reader.read(decoding.parse_message(msg.SerializeToString()))
    (labels,) = list(part.aggregates.http)
    got = dict(zip(part.kinds.http_policy.names, labels, strict=True))
    assert got["reporter"] == "destination"
    assert got["source_workload"] == "web"
    assert got["source_principal"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert got["destination_principal"] == "spiffe://cluster.local/ns/shop/sa/cart"
    assert got["connection_security_policy"] == "mutual_tls"
    assert got["destination_workload_namespace"] == "shop"
    # The inbound service: the node's canonical service (its app label) in its namespace.
    assert got["destination_service"] == "cart.shop.svc.cluster.local"
