"""Telemetry from ALS messages shaped exactly as istio-proxy 1.22 (wasm.* FlatBuffers), 1.24 (packed Struct),
1.26 and 1.28 (CelState Struct) send them (tests/telemetry/istio_proxy.py cites how each part is built).

Every scenario asserts all 25 labels and the counts against the series istio/proxy's stats filter exports
for the same traffic (release-1.28 source/extensions/filters/http/istio_stats/istio_stats.cc, cited per
label below), with both readers (the compiled scanner and its Python reference).

Where the access log cannot carry what istio_stats reads, the expected value says so:
- reporter="source" destination_principal: istio_stats takes the upstream TLS peer SAN (l.1049-1053), which
  Envoy's ALS does not log (tls_properties are downstream-only); the peer object's `identity` (l.1054-1059,
  1.25+ when the peer came from workload discovery) is what remains, else "unknown".
- reporter="source" source_principal: the upstream TLS local SAN (l.1062-1064); remixer claims the proxy's
  own SPIFFE identity (trust domain + node SERVICE_ACCOUNT) towards peers in the mesh.
"""

from __future__ import annotations

from typing import Any

import pytest
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry.app import TelemetryPart
from telemetry.edge import decoding
from telemetry.structs import LABEL_NAMES, TCP_LABEL_NAMES
from tests.telemetry.harness import offline_part
from tests.telemetry.istio_proxy import STRUCT_URL, VERSIONS, address, first_message, node_metadata, set_peer

PRODUCTPAGE = node_metadata("productpage-v1", "productpage", "10.1.0.5")
REVIEWS = node_metadata("reviews-v1", "reviews", "10.1.0.7")
MONGODB = node_metadata("mongodb-v1", "mongodb", "10.1.0.9")
SPIFFE = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-{}"
REVIEWS_SVC = "reviews.bookinfo.svc.cluster.local"


_part = offline_part


def _reader(
    part: TelemetryPart, first: als_pb2.StreamAccessLogsMessage, compiled: bool
) -> decoding.StreamReader:
    reader = part.readers.open(decoding.stream_identity(first.identifier.SerializeToString()))
    if not compiled:  # the Python reference, with the identity the part gave the compiled one
        reader = decoding.StreamReader(reader.identity, part.readers)
    assert isinstance(reader, decoding.CompiledStreamReader) == compiled
    return reader


def source_series(**changes: str) -> dict[str, str]:
    """productpage's sidecar calling reviews (reporter="source", istio_stats l.1180-1235)."""
    labels = {
        "reporter": "source",  # outbound listener: Reporter::ClientSidecar (l.463-471, 762-763)
        "source_workload": "productpage-v1",  # the node's WORKLOAD_NAME (context_.workload_name_)
        "source_canonical_service": "productpage",
        "source_canonical_revision": "v1",
        "source_workload_namespace": "bookinfo",
        "source_principal": SPIFFE.format("productpage"),
        "source_app": "productpage",
        "source_version": "v1",
        "source_cluster": "Kubernetes",
        "destination_workload": "reviews-v1",  # the upstream peer object (l.1189-1191)
        "destination_workload_namespace": "bookinfo",
        "destination_principal": "unknown",  # upstream TLS SAN: not in the access log (see top)
        "destination_app": "reviews",
        "destination_version": "v1",
        "destination_service": REVIEWS_SVC,  # the outbound cluster's service (l.992-1015)
        "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v1",
        "destination_service_name": "reviews",
        "destination_service_namespace": "bookinfo",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
        "connection_security_policy": "unknown",  # the source reporter never knows (l.946-948, unset)
    }
    return {**labels, **changes}


def destination_series(**changes: str) -> dict[str, str]:
    """reviews' sidecar serving productpage (reporter="destination", istio_stats l.1082-1178)."""
    labels = {
        "reporter": "destination",  # inbound listener: Reporter::ServerSidecar
        "source_workload": "productpage-v1",  # the downstream peer object (l.1085-1087)
        "source_canonical_service": "productpage",
        "source_canonical_revision": "v1",
        "source_workload_namespace": "bookinfo",  # from the peer SAN, else the peer (l.1068-1078)
        "source_principal": SPIFFE.format("productpage"),  # downstream certificate (l.1025-1042)
        "source_app": "productpage",
        "source_version": "v1",
        "source_cluster": "Kubernetes",
        "destination_workload": "reviews-v1",  # the node itself (l.1159-1170)
        "destination_workload_namespace": "bookinfo",
        "destination_principal": SPIFFE.format("reviews"),
        "destination_app": "reviews",
        "destination_version": "v1",
        "destination_service": REVIEWS_SVC,  # the inbound cluster's service, never the Host header
        "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v1",
        "destination_service_name": "reviews",
        "destination_service_namespace": "bookinfo",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",  # both SANs present (l.1045)
    }
    return {**labels, **changes}


def _tls(common: Any, peer: str, local: str, sni: str = "") -> None:
    common.tls_properties.peer_certificate_properties.subject_alt_name.add().uri = SPIFFE.format(peer)
    common.tls_properties.local_certificate_properties.subject_alt_name.add().uri = SPIFFE.format(local)
    if sni:
        common.tls_properties.tls_sni_hostname = sni


def _http(msg: als_pb2.StreamAccessLogsMessage, cluster: str, authority: str, code: int) -> Any:
    entry = msg.http_logs.log_entry.add()
    entry.common_properties.upstream_cluster = cluster
    entry.common_properties.duration.FromMilliseconds(7)
    entry.common_properties.access_log_type = 6  # DownstreamEnd
    entry.request.authority = authority
    entry.request.request_headers_bytes = 300
    entry.response.response_code.value = code
    return entry


def _series(part: TelemetryPart) -> dict[tuple[str, ...], int]:
    return {labels: s.count for labels, s in part.aggregates.http.items()}


def _labels(expected: dict[str, str]) -> tuple[str, ...]:
    assert set(expected) == set(LABEL_NAMES)
    return tuple(expected[name] for name in LABEL_NAMES)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("version", VERSIONS)
def test_http_source_side(version: str, compiled: bool) -> None:
    """productpage's sidecar: a call, a 503 UF to an endpoint that never answered, gRPC OK and errors."""
    part = _part()
    first = first_message(PRODUCTPAGE, "remixer_http_outbound", "10.1.0.5")
    msg = als_pb2.StreamAccessLogsMessage()
    msg.CopyFrom(first)
    cluster = f"outbound|9080||{REVIEWS_SVC}"
    # The upstream peer from the MX response headers (peer_metadata upstream discovery).
    for _ in range(3):
        set_peer(_http(msg, cluster, "reviews:9080", 200).common_properties, "upstream", REVIEWS, version)
    # 503 UF: no response, so no MX header; 1.24+ may still know the endpoint from workload discovery
    # (XDSMethod, peer_metadata/filter.cc l.47-86), which carries the identity from 1.25 on.
    uf = _http(msg, cluster, "reviews:9080", 503)
    uf.common_properties.response_flags.upstream_connection_failure = True
    if version >= "1.24":
        set_peer(uf.common_properties, "upstream", REVIEWS, version, identity=SPIFFE.format("reviews"))
    # gRPC (content-type logged, deploy/istio): OK in trailers; an error as trailers-only (grpc-status in the
    # response headers); a local 503 with no grpc-status at all (inferred: httpToGrpcStatus -> 14).
    for code, trailer, header, count in ((200, "0", "", 2), (200, "", "5", 1), (503, "", "", 1)):
        for _ in range(count):
            e = _http(msg, cluster, "reviews:9080", code)
            e.request.request_headers["content-type"] = "application/grpc"
            if trailer:
                e.response.response_trailers["grpc-status"] = trailer
            if header:
                e.response.response_headers["grpc-status"] = header
            if code == 200:
                set_peer(e.common_properties, "upstream", REVIEWS, version)
            else:
                e.common_properties.response_flags.upstream_connection_failure = True
    reader = _reader(part, first, compiled)
    reader.read_bytes(msg.SerializeToString())
    no_peer = {
        "destination_workload": "unknown",
        "destination_workload_namespace": "unknown",
        "destination_app": "unknown",
        "destination_version": "unknown",
        "destination_canonical_service": "unknown",
        "destination_canonical_revision": "latest",  # l.1209-1211
        "destination_cluster": "unknown",
        "source_principal": "unknown",
    }
    uf_labels = (
        source_series(response_code="503", response_flags="UF", **no_peer)
        if version < "1.24"
        else source_series(
            response_code="503",
            response_flags="UF",
            destination_principal=SPIFFE.format("reviews") if version >= "1.25" else "unknown",
        )
    )
    grpc = {"request_protocol": "grpc"}
    assert _series(part) == {
        _labels(source_series()): 3,
        _labels(uf_labels): 1,
        _labels(source_series(grpc_response_status="0", **grpc)): 2,
        _labels(source_series(grpc_response_status="5", **grpc)): 1,
        _labels(
            source_series(
                response_code="503", response_flags="UF", grpc_response_status="14", **grpc, **no_peer
            )
        ): 1,
    }


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("version", VERSIONS)
def test_http_destination_side_and_local_replies(version: str, compiled: bool) -> None:
    """reviews' sidecar: served requests and ext_authz denials (403, 429) that never reached the app. A
    denial is a local reply with no upstream cluster: still reporter="destination" with the caller as
    source, and the Host the client chose names nothing."""
    part = _part()
    first = first_message(REVIEWS, "remixer_http_inbound", "10.1.0.7")
    msg = als_pb2.StreamAccessLogsMessage()
    msg.CopyFrom(first)
    for cluster, authority, code, count in (
        ("inbound|9080||", "reviews:9080", 200, 4),
        ("", "evil.example.com", 403, 2),
        ("", "reviews.bookinfo.svc.cluster.local:9080", 429, 1),
    ):
        for _ in range(count):
            e = _http(msg, cluster, authority, code)
            _tls(e.common_properties, "productpage", "reviews")
            address(e.common_properties.downstream_local_address, "10.1.0.7", 9080)
            set_peer(e.common_properties, "downstream", PRODUCTPAGE, version)
            if not cluster:
                e.common_properties.response_flags.unauthorized_details.reason = 1  # EXTERNAL_SERVICE
    reader = _reader(part, first, compiled)
    reader.read_bytes(msg.SerializeToString())
    assert _series(part) == {
        _labels(destination_series()): 4,
        _labels(destination_series(response_code="403", response_flags="UAEX")): 2,
        _labels(destination_series(response_code="429", response_flags="UAEX")): 1,
    }


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_local_reply_side_from_instance_ips_when_the_log_name_says_nothing(compiled: bool) -> None:
    """A log name without a direction: a denial whose downstream local address is one of the pod's
    INSTANCE_IPS arrived inbound; one with no such fact is not booked at all (never guessed)."""
    part = _part()
    first = first_message(REVIEWS, "remixer_http", "10.1.0.7")
    msg = als_pb2.StreamAccessLogsMessage()
    msg.CopyFrom(first)
    for local in ("10.1.0.7", "10.96.0.10"):
        e = _http(msg, "", "evil.example.com", 403)
        address(e.common_properties.downstream_local_address, local, 9080)
        set_peer(e.common_properties, "downstream", PRODUCTPAGE, "1.28")
        _tls(e.common_properties, "productpage", "reviews")
    batch = _reader(part, first, compiled).read_bytes(msg.SerializeToString())
    assert _series(part) == {_labels(destination_series(response_code="403")): 1}
    assert batch.entries == 2
    unbooked = [k for k in batch.counts if not k.derived.booked]
    assert len(unbooked) == 1
    assert unbooked[0].derived.edge is None


def _tcp(
    msg: als_pb2.StreamAccessLogsMessage, log_type: int, sent: int, received: int, stream_id: str
) -> Any:
    entry = msg.tcp_logs.log_entry.add()
    entry.common_properties.access_log_type = log_type
    entry.common_properties.stream_id = stream_id
    entry.connection_properties.sent_bytes = sent
    entry.connection_properties.received_bytes = received
    return entry


def _tcp_series(part: TelemetryPart) -> dict[tuple[str, ...], tuple[int, int, int, int]]:
    return {k: (s.opened, s.closed, s.sent, s.received) for k, s in part.aggregates.tcp.items()}


def _tcp_labels(expected: dict[str, str]) -> tuple[str, ...]:
    return tuple(expected[name] for name in TCP_LABEL_NAMES)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("version", VERSIONS)
def test_tcp_held_open_books_open_bytes_and_close_once(version: str, compiled: bool) -> None:
    """reviews -> mongodb held open across two flush intervals (tcp_proxy access_log_options: a log on
    connect, one per interval, one at the end; each carries the connection's bytes so far, as Envoy 1.40
    sends them). istio_stats books opened once, bytes as deltas, closed at the end (l.896-935)."""
    part = _part()
    first = first_message(REVIEWS, "remixer_tcp_outbound", "10.1.0.7")
    reader = _reader(part, first, compiled)
    cluster = "outbound|27017||mongodb.bookinfo.svc.cluster.local"
    expected = _tcp_labels(
        source_series(
            request_protocol="tcp",
            source_workload="reviews-v1",
            source_canonical_service="reviews",
            source_app="reviews",
            source_principal=SPIFFE.format("reviews"),
            destination_workload="mongodb-v1",
            destination_app="mongodb",
            destination_canonical_service="mongodb",
            destination_service="mongodb.bookinfo.svc.cluster.local",
            destination_service_name="mongodb",
            response_code="",
        )
    )
    steps = ((1, 0, 0), (2, 120, 40), (2, 300, 90), (3, 310, 95))
    want = ((1, 0, 0, 0), (1, 0, 120, 40), (1, 0, 300, 90), (1, 1, 310, 95))
    for i, ((log_type, sent, received), booked) in enumerate(zip(steps, want, strict=True)):
        msg = als_pb2.StreamAccessLogsMessage()
        if i == 0:
            msg.CopyFrom(first)
        e = _tcp(msg, log_type, sent, received, "726745c2-cd1d-4484-b83a-383437e859af")
        e.common_properties.upstream_cluster = cluster
        # TCP MX writes the upstream peer (metadata_exchange.cc updatePeer, upstream filter state).
        set_peer(e.common_properties, "upstream", MONGODB, version)
        reader.read_bytes(msg.SerializeToString())
        assert _tcp_series(part) == {expected: booked}, f"after log {i} (type {log_type})"


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("version", VERSIONS)
def test_tcp_short_connection_at_the_destination(version: str, compiled: bool) -> None:
    """mongodb's sidecar: a short connection logged once at its end. destination_service is the inbound
    service, never the SNI string the caller used (outbound_.27017_._.mongodb...) nor an IP."""
    part = _part()
    first = first_message(MONGODB, "remixer_tcp_inbound", "10.1.0.9")
    msg = als_pb2.StreamAccessLogsMessage()
    msg.CopyFrom(first)
    for sid in ("a", "b"):
        e = _tcp(msg, 3, 64, 512, sid)
        e.common_properties.upstream_cluster = "inbound|27017||"
        _tls(
            e.common_properties,
            "reviews",
            "mongodb",
            sni="outbound_.27017_._.mongodb.bookinfo.svc.cluster.local",
        )
        set_peer(e.common_properties, "downstream", REVIEWS, version)
        address(e.common_properties.upstream_remote_address, "10.1.0.9", 27017)
    _reader(part, first, compiled).read_bytes(msg.SerializeToString())
    expected = destination_series(
        request_protocol="tcp",
        source_workload="reviews-v1",
        source_canonical_service="reviews",
        source_app="reviews",
        source_principal=SPIFFE.format("reviews"),
        destination_workload="mongodb-v1",
        destination_principal=SPIFFE.format("mongodb"),
        destination_app="mongodb",
        destination_canonical_service="mongodb",
        destination_service="mongodb.bookinfo.svc.cluster.local",
        destination_service_name="mongodb",
    )
    assert _tcp_series(part) == {_tcp_labels(expected): (2, 2, 128, 1024)}


# ---- hostile peer objects ---------------------------------------------------------------------------------

TOKENS = [
    "type",
    "workload",
    "name",
    "cluster",
    "namespace",
    "service",
    "revision",
    "app",
    "version",
    "identity",
    "labels",
    "NAMESPACE",
    "WORKLOAD_NAME",
    "LABELS",
    "extra",
    "",
]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.text(min_size=250, max_size=600),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(TOKENS), inner, max_size=4),
    max_leaves=12,
)


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return set()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.dictionaries(st.sampled_from(TOKENS), _json, max_size=12),
    type_url=st.sampled_from([STRUCT_URL, "type.googleapis.com/google.protobuf.BytesValue", "x", ""]),
    mangle=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_hostile_peer_objects_never_crash_nor_leave_the_vocabulary(
    fields: dict[str, Any], type_url: str, mangle: bytes | None
) -> None:
    """Missing, extra, non-string, nested and oversized fields, wrong type URLs and garbage values: the
    entry is read, and every label is the node's, a fixed word, or a string the object really carried."""
    struct = struct_pb2.Struct()
    struct.update(fields)
    value = mangle if mangle is not None else struct.SerializeToString()
    if type_url.endswith("BytesValue"):
        value = wrappers_pb2.BytesValue(value=value).SerializeToString()
    raw = any_pb2.Any(type_url=type_url, value=value).SerializeToString()
    for compiled in (True, False):
        part = _part()
        first = first_message(REVIEWS, "remixer_http_inbound", "10.1.0.7")
        msg = als_pb2.StreamAccessLogsMessage()
        msg.CopyFrom(first)
        e = _http(msg, "inbound|9080||", "reviews:9080", 200)
        e.common_properties.filter_state_objects["downstream_peer"].ParseFromString(raw)
        e.common_properties.filter_state_objects["wasm.downstream_peer"].ParseFromString(raw)
        _reader(part, first, compiled).read_bytes(msg.SerializeToString())
        ((labels, count),) = _series(part).items()
        assert count == 1
        carried = {s for s in _strings(fields) if 0 < len(s) <= 253}
        fixed = set(destination_series().values()) | {"unknown", "latest", "none", "mutual_tls"}
        for name, value in zip(LABEL_NAMES, labels, strict=True):
            assert value in fixed or value in carried, (name, value)
