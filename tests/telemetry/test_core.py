"""Pure label derivation, path templating and aggregation."""

from __future__ import annotations

import dataclasses
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.core import labels
from telemetry.core.aggregates import Aggregates, HttpTally, cumulative
from telemetry.core.paths import PathTemplates
from telemetry.edge import wire
from telemetry.structs import LABEL_INDEX, LABEL_NAMES, OVERFLOW, EntryFacts, StreamIdentity, WorkloadIdentity

PRODUCTPAGE = labels.workload_identity(
    {
        "NAME": "productpage-v1-abc",
        "NAMESPACE": "bookinfo",
        "WORKLOAD_NAME": "productpage-v1",
        "CLUSTER_ID": "east",
        "LABELS": {
            "app": "productpage",
            "version": "v1",
            "service.istio.io/canonical-name": "productpage-svc",
            "service.istio.io/canonical-revision": "r1",
        },
    }
)
STREAM = StreamIdentity(
    node_id="sidecar~1~productpage-v1-abc.bookinfo~bookinfo.svc.cluster.local",
    log_name="l",
    workload=PRODUCTPAGE,
    principal="spiffe://cluster.local/ns/bookinfo/sa/productpage",
)
REVIEWS = labels.workload_identity(
    {
        "NAMESPACE": "bookinfo",
        "WORKLOAD_NAME": "reviews-v2",
        "CLUSTER_ID": "east",
        "LABELS": {"app": "reviews", "version": "v2"},
    }
)


def as_dict(values: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(LABEL_NAMES, values, strict=True))


def test_source_reporter_from_outbound_cluster() -> None:
    facts = EntryFacts(
        upstream_cluster="outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
        direction="outbound",
        authority="reviews:9080",
        response_code=503,
        response_flags="UF,URX",
        # The upstream peer object's identity stands in for the upstream certificate (not in the log).
        peer=dataclasses.replace(REVIEWS, principal="spiffe://cluster.local/ns/bookinfo/sa/reviews"),
    )
    derived = labels.derive(STREAM, facts)
    got = as_dict(derived.labels)
    assert got == {
        "reporter": "source",
        "source_workload": "productpage-v1",
        "source_canonical_service": "productpage-svc",
        "source_canonical_revision": "r1",
        "source_workload_namespace": "bookinfo",
        "source_principal": "spiffe://cluster.local/ns/bookinfo/sa/productpage",
        "source_app": "productpage",
        "source_version": "v1",
        "source_cluster": "east",
        "destination_workload": "reviews-v2",
        "destination_workload_namespace": "bookinfo",
        "destination_principal": "spiffe://cluster.local/ns/bookinfo/sa/reviews",
        "destination_app": "reviews",
        "destination_version": "v2",
        "destination_service": "reviews.bookinfo.svc.cluster.local",
        "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v2",
        "destination_service_name": "reviews",
        "destination_service_namespace": "bookinfo",
        "destination_cluster": "east",
        "request_protocol": "http",
        "response_code": "503",
        "grpc_response_status": "",
        "response_flags": "UF,URX",
        "connection_security_policy": "unknown",
    }
    assert derived.record_key == b"reviews.bookinfo.svc.cluster.local"
    assert derived.edge is not None
    assert (derived.edge.source_workload, derived.edge.destination_port) == ("productpage-v1", 9080)
    assert derived.misses == ()


def test_destination_reporter_from_inbound_cluster_uses_authority_and_peer() -> None:
    facts = EntryFacts(
        upstream_cluster="inbound|9080||",
        direction="inbound",
        authority="productpage:9080",
        peer=REVIEWS,
        mtls=True,
        peer_principal="spiffe://cluster.local/ns/bookinfo/sa/reviews",
        local_principal="spiffe://cluster.local/ns/bookinfo/sa/productpage",
        grpc_status="0",
        protocol="grpc",
        response_code=200,
    )
    got = as_dict(labels.derive(STREAM, facts).labels)
    assert got["reporter"] == "destination"
    assert got["destination_workload"] == "productpage-v1"
    assert got["source_workload"] == "reviews-v2"
    assert got["source_principal"] == "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    assert got["destination_principal"] == "spiffe://cluster.local/ns/bookinfo/sa/productpage"
    # The inbound service: the workload's canonical service in its namespace, whatever Host the caller sent.
    assert got["destination_service"] == "productpage-svc.bookinfo.svc.cluster.local"
    assert got["destination_service_name"] == "productpage-svc"
    assert got["connection_security_policy"] == "mutual_tls"
    assert (got["request_protocol"], got["grpc_response_status"]) == ("grpc", "0")


def test_passthrough_resolves_destination_from_authority() -> None:
    facts = EntryFacts(
        upstream_cluster="PassthroughCluster", direction="outbound", authority="api.example.com:8443"
    )
    derived = labels.derive(STREAM, facts)
    got = as_dict(derived.labels)
    assert got["destination_service"] == "api.example.com"
    assert got["destination_service_name"] == "PassthroughCluster"
    assert derived.edge is not None
    assert (derived.edge.destination_service, derived.edge.destination_port) == ("api.example.com", 8443)


def test_plain_envoy_without_metadata_is_all_unknown_but_complete() -> None:
    stream = StreamIdentity(node_id="front-proxy", log_name="x", workload=labels.workload_identity({}))
    facts = EntryFacts(upstream_cluster="backend", direction="outbound", response_code=404)
    derived = labels.derive(stream, facts)
    got = as_dict(derived.labels)
    assert all(v for k, v in got.items() if k != "grpc_response_status")
    assert got["source_workload"] == "unknown"
    assert got["destination_service"] == "unknown"
    assert got["response_code"] == "404"
    assert got["response_flags"] == "-"
    assert got["destination_canonical_revision"] == "latest"  # as Istio reports an unknown peer
    assert derived.edge is None
    assert set(derived.misses) == {"source_workload", "destination_workload", "destination_service"}


def test_namespace_from_node_id_and_canonical_defaults() -> None:
    ident = labels.workload_identity(
        {"LABELS": {"app": "ratings"}}, "sidecar~10.0.0.1~ratings-v1-x.shop~shop.svc.cluster.local"
    )
    assert ident.namespace == "shop"
    assert ident.canonical_service == "ratings"
    assert ident.canonical_revision == "latest"
    assert labels.workload_identity({}) == WorkloadIdentity()


def test_cluster_and_authority_parsing() -> None:
    assert labels.parse_cluster("outbound|80||a.b.svc.cluster.local") == labels.ClusterName(
        "outbound", 80, "a.b.svc.cluster.local"
    )
    assert labels.parse_cluster("inbound|x||").port == 0
    assert labels.parse_cluster("web").direction == "other"
    assert labels.split_authority("Example.COM:8080") == ("example.com", 8080)
    assert labels.split_authority("[::1]:9090") == ("::1", 9090)
    assert labels.split_authority("host:notaport") == ("host", 0)
    assert labels.split_authority("host:²") == ("host", 0)  # a digit to str.isdigit, not to int()
    assert labels.split_authority("host:99999") == ("host", 0)
    assert labels.parse_cluster("outbound|²||a.b.svc.cluster.local").port == 0
    assert labels.service_name_and_namespace("details.default.svc.cluster.local") == ("details", "default")
    assert labels.service_name_and_namespace("example.com") == ("example.com", "unknown")


def test_label_policy_drops_and_rewrites() -> None:
    policy = labels.LabelPolicy(
        names=LABEL_NAMES,
        drop=["source_principal", "destination_principal"],
        rewrites=[("response_code", r"(\d)\d\d", r"\1xx")],
    )
    facts = EntryFacts(upstream_cluster="outbound|1||a.b.svc.c", direction="outbound", response_code=404)
    values = labels.derive(STREAM, facts).labels
    out = dict(zip(policy.names, policy.apply(values), strict=True))
    assert "source_principal" not in out
    assert len(out) == 23
    assert out["response_code"] == "4xx"


def test_paths_are_templated() -> None:
    templates = PathTemplates(["/api/users/{id}/orders"])
    assert templates.template("/api/users/42/orders?x=1") == "/api/users/{id}/orders"
    assert (
        templates.template("/items/123/part/550e8400-e29b-41d4-a716-446655440000")
        == "/items/{num}/part/{uuid}"
    )
    assert templates.template("/blob/deadbeefdeadbeef0001") == "/blob/{id}"
    assert templates.template("") == "/"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable, max_size=300))
def test_path_templates_are_bounded(path: str) -> None:
    out = PathTemplates([]).template(path)
    assert "?" not in out
    assert out.count("/") <= 14


@settings(max_examples=500, deadline=None)
@given(
    cluster=st.one_of(
        st.text(max_size=40), st.sampled_from(["outbound|80||x.y.svc.cluster.local", "inbound|1||"])
    ),
    authority=st.text(max_size=60),
    code=st.integers(min_value=0, max_value=999),
    log_name=st.sampled_from(["remixer_http_inbound", "remixer_http_outbound", "x"]),
)
def test_derive_always_yields_every_label(cluster: str, authority: str, code: int, log_name: str) -> None:
    stream = dataclasses.replace(STREAM, direction=labels.log_direction(log_name))
    direction = labels.direction_of(cluster, stream, "")
    facts = EntryFacts(upstream_cluster=cluster, direction=direction, authority=authority, response_code=code)
    derived = labels.derive(stream, facts)
    assert len(derived.labels) == len(LABEL_NAMES)
    assert derived.labels[LABEL_INDEX["reporter"]] == {"outbound": "source", "inbound": "destination"}.get(
        direction, "unknown"
    )
    assert derived.booked == (direction != "")
    assert all(v != "" for i, v in enumerate(derived.labels) if LABEL_NAMES[i] != "grpc_response_status")


def test_aggregates_cap_series_into_overflow() -> None:
    agg = Aggregates(http_label_count=2, tcp_label_count=1, max_series=2)
    one = HttpTally()
    one.observe(3.0, 10, 2000)
    for i in range(5):
        one.apply(agg.http_slot((str(i), "x")))
    assert len(agg.http) == 3  # two label sets and the overflow series
    assert agg.http[(OVERFLOW, OVERFLOW)].count == 3
    assert agg.overflowed["http"] == 3
    assert cumulative(one.duration)[-1] == 1
    assert cumulative(one.response_bytes)[:7] == [0, 0, 0, 0, 0, 0, 0]


def test_ids_with_a_trailing_newline_are_not_left_as_they_are() -> None:
    """`$` accepts a trailing newline: a segment '42\\n' must not pass as a number label value, and a
    template must not match '/orders/1\\n' as if it were '/orders/1'."""
    paths = PathTemplates(["/orders/{id}"])
    assert paths.template("/orders/1") == "/orders/{id}"
    assert paths.template("/orders/1\n/x") != "/orders/{id}"
    assert PathTemplates([]).template("/n/42") == "/n/{num}"
    assert PathTemplates([]).template("/n/42\n") == "/n/42\n"


def test_grpc_status_as_envoy_reads_it() -> None:
    """Grpc::Common::getGrpcStatus (envoyproxy/envoy source/common/grpc/common.cc): the grpc-status value when
    it is a known code, InvalidCode (-1) when not; without one, inferred from the HTTP status
    (Grpc::Utility::httpToGrpcStatus, source/common/grpc/status.cc); nothing without a response."""
    assert [wire.grpc_status(t, 200) for t in ("0", "16", "17", "abc", "-1", "²")] == [
        "0",
        "16",
        "-1",
        "-1",
        "-1",
        "-1",
    ]
    inferred = {
        code: wire.grpc_status("", code) for code in (400, 401, 403, 404, 429, 502, 503, 504, 500, 200)
    }
    assert inferred == {
        400: "13",
        401: "16",
        403: "7",
        404: "12",
        429: "14",
        502: "14",
        503: "14",
        504: "14",
        500: "2",
        200: "2",
    }
    assert wire.grpc_status("", 0) == ""
