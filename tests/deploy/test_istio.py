"""Istio wiring: every Istio object validates against the real CRD schemas (tests/istio-crds), and the
MeshConfig providers point at the Services and ports the Kubernetes manifests really define."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format

from controller.core import scopes
from controller.settings import ControllerSettings
from telemetry.core.labels import log_direction

from .paths import DEPLOY, kustomize_build
from .schemas import crd_validators

MESH_VALUES = DEPLOY / "istio/meshconfig-values.yaml"

# istio/api mesh/v1alpha1/config.proto (b8f8791), JSON names of each provider's fields.
PROVIDER_FIELDS = {
    "envoyExtAuthzGrpc": {
        "service",
        "port",
        "timeout",
        "failOpen",
        "clearRouteCache",
        "statusOnError",
        "includeRequestBodyInCheck",
    },
    "envoyExtAuthzHttp": {
        "service",
        "port",
        "timeout",
        "pathPrefix",
        "failOpen",
        "clearRouteCache",
        "statusOnError",
        "includeRequestHeadersInCheck",
        "includeAdditionalHeadersInCheck",
        "includeRequestBodyInCheck",
        "headersToUpstreamOnAllow",
        "headersToDownstreamOnDeny",
        "headersToDownstreamOnAllow",
    },
    "envoyHttpAls": {
        "service",
        "port",
        "logName",
        "filterStateObjectsToLog",
        "additionalRequestHeadersToLog",
        "additionalResponseHeadersToLog",
        "additionalResponseTrailersToLog",
    },
    "envoyTcpAls": {"service", "port", "logName", "filterStateObjectsToLog"},
}


@pytest.fixture(scope="module")
def istio_objects() -> list[dict[str, Any]]:
    return kustomize_build("istio")


def test_every_istio_object_validates_against_its_crd(istio_objects: list[dict[str, Any]]) -> None:
    validators = crd_validators()
    kinds = set()
    for obj in istio_objects:
        validator = validators.get((obj["apiVersion"], obj["kind"]))
        assert validator is not None, f"no CRD schema for {obj['apiVersion']} {obj['kind']}"
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: {errors}"
        kinds.add(obj["kind"])
    assert kinds == {"Sidecar", "AuthorizationPolicy", "Telemetry"}


def test_the_validator_really_rejects_a_broken_object() -> None:
    validators = crd_validators()
    bad = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "x"},
        "spec": {"egress": [{"hostz": ["./*"]}], "outboundTrafficPolicy": {"mode": "SOMETIMES"}},
    }
    messages = " ".join(e.message for e in validators[("networking.istio.io/v1", "Sidecar")].iter_errors(bad))
    assert "hosts" in messages
    assert "SOMETIMES" in messages
    assert "hostz" in messages


def test_root_default_sidecar_is_selectorless_and_keeps_remixer_reachable(
    istio_objects: list[dict[str, Any]],
) -> None:
    sidecars = [o for o in istio_objects if o["kind"] == "Sidecar"]
    assert len(sidecars) == 1
    (sidecar,) = sidecars
    assert sidecar["metadata"] == {"name": "default", "namespace": "istio-system"}
    assert "workloadSelector" not in sidecar["spec"]
    hosts = sidecar["spec"]["egress"][0]["hosts"]
    assert {"./*", "istio-system/*", "remixer/*"} <= set(hosts)
    # The controller's generated Sidecars keep remixer and the control plane in scope too, with the
    # ConfigMap's settings (remixer's namespace is the controller's default remixer_namespace).
    config = yaml.safe_load((DEPLOY / "kubernetes/base/remixer.yaml").read_text())
    settings = ControllerSettings.model_validate(config.get("controller") or {})
    assert {"istio-system/*", "remixer/*"} <= scopes.required_hosts(settings)


def mesh_providers() -> dict[str, tuple[str, dict[str, Any]]]:
    providers = yaml.safe_load(MESH_VALUES.read_text())["meshConfig"]["extensionProviders"]
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for provider in providers:
        name = provider.pop("name")
        ((kind, body),) = provider.items()
        out[name] = (kind, body)
    return out


def test_mesh_config_providers_use_istio_field_names_and_real_services() -> None:
    providers = mesh_providers()
    assert {kind for kind, _ in providers.values()} == set(PROVIDER_FIELDS)
    services = {
        f"{o['metadata']['name']}.{o['metadata']['namespace']}.svc.cluster.local": {
            p["port"]: p["name"] for p in o["spec"]["ports"]
        }
        for o in kustomize_build("kubernetes/base")
        if o["kind"] == "Service"
    }
    for name, (kind, body) in providers.items():
        assert set(body) <= PROVIDER_FIELDS[kind], (
            f"{name}: unknown fields {set(body) - PROVIDER_FIELDS[kind]}"
        )
        assert {"service", "port"} <= set(body), name
        port_name = services[body["service"]][body["port"]]
        wanted = "http-ext-authz" if kind == "envoyExtAuthzHttp" else "grpc"
        assert port_name == wanted, f"{name} points at port {body['port']} ({port_name})"
        if kind.startswith("envoyExtAuthz"):
            assert body["service"].startswith("remixer-policy.")
        else:
            assert body["service"].startswith("remixer-telemetry.")


def test_policies_and_telemetry_name_providers_that_exist(istio_objects: list[dict[str, Any]]) -> None:
    providers = mesh_providers()
    for obj in istio_objects:
        if obj["kind"] == "AuthorizationPolicy":
            assert obj["spec"]["action"] == "CUSTOM"
            assert providers[obj["spec"]["provider"]["name"]][0] == "envoyExtAuthzGrpc"
        if obj["kind"] == "Telemetry":
            for logging in obj["spec"]["accessLogging"]:
                kinds = {providers[p["name"]][0] for p in logging["providers"]}
                assert kinds == {"envoyHttpAls", "envoyTcpAls"}
                # Client-side logs under an _outbound name, server-side under _inbound: the direction
                # remixer books them with (telemetry/core/labels.py log_direction).
                mode = logging.get("match", {}).get("mode")
                if mode:
                    side = {"CLIENT": "outbound", "SERVER": "inbound"}[mode]
                    for p in logging["providers"]:
                        assert log_direction(providers[p["name"]][1]["logName"]) == side


def test_tcp_flush_envoyfilter_patches_real_tcp_proxy_fields() -> None:
    """The EnvoyFilter (no CRD schema here) merges fields that exist in Envoy's TcpProxy, with the filter
    name istiod gives tcp_proxy; the access-log providers log the peer objects of every supported proxy."""
    (obj,) = yaml.safe_load_all((DEPLOY / "istio/envoyfilter-tcp-flush.yaml").read_text())
    (patch,) = obj["spec"]["configPatches"]
    assert patch["applyTo"] == "NETWORK_FILTER"
    assert patch["patch"]["operation"] == "MERGE"
    assert patch["match"]["listener"]["filterChain"]["filter"]["name"] == "envoy.filters.network.tcp_proxy"
    config = dict(patch["patch"]["value"]["typed_config"])
    assert config.pop("@type") == "type.googleapis.com/" + tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name
    options = json_format.ParseDict(config, tcp_proxy_pb2.TcpProxy()).access_log_options
    assert options.flush_access_log_on_connected
    assert options.access_log_flush_interval.seconds == 5
    for _, (kind, body) in mesh_providers().items():
        if kind in ("envoyHttpAls", "envoyTcpAls"):
            assert set(body["filterStateObjectsToLog"]) >= {
                "upstream_peer",
                "downstream_peer",
                "wasm.upstream_peer",
                "wasm.downstream_peer",
            }
