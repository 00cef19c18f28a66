"""The gRPC edge reads every CheckRequest attribute into the right CheckInput field."""

from __future__ import annotations

from envoy.service.auth.v3 import external_auth_pb2

from policy.edge.grpc_authz import check_input


def test_every_attribute_lands_in_its_field() -> None:
    msg = external_auth_pb2.CheckRequest()
    attrs = msg.attributes
    attrs.source.address.socket_address.address = "10.0.0.1"
    attrs.source.principal = "spiffe://td/ns/shop/sa/cart"
    attrs.source.service = "cart"
    attrs.source.labels["app"] = "cart"
    attrs.destination.address.socket_address.address = "10.0.0.2"
    attrs.destination.address.socket_address.port_value = 8080
    attrs.destination.service = "catalog"
    attrs.destination.labels["version"] = "v2"
    attrs.context_extensions["tenant"] = "t1"
    http = attrs.request.http
    http.id = "17"
    http.method = "PUT"
    http.path = "/items/1?x=y"
    http.host = "catalog:8080"
    http.scheme = "https"
    http.headers["x-request-id"] = "rid-1"

    req = check_input(msg)

    assert (req.method, req.path, req.host, req.scheme) == ("PUT", "/items/1?x=y", "catalog:8080", "https")
    assert req.request_id == "rid-1"
    assert req.headers["x-request-id"] == "rid-1"
    assert (req.source_address, req.source_principal, req.source_service) == (
        "10.0.0.1",
        "spiffe://td/ns/shop/sa/cart",
        "cart",
    )
    assert dict(req.source_labels) == {"app": "cart"}
    assert (req.destination_address, req.destination_port, req.destination_service) == (
        "10.0.0.2",
        8080,
        "catalog",
    )
    assert dict(req.destination_labels) == {"version": "v2"}
    assert dict(req.context) == {"tenant": "t1"}


def test_request_id_falls_back_to_the_stream_id() -> None:
    msg = external_auth_pb2.CheckRequest()
    msg.attributes.request.http.id = "42"
    assert check_input(msg).request_id == "42"
