"""The controller's section of remixer's settings (`controller:` in YAML, `REMIXER_CONTROLLER__*` in env)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.core.names import is_dns_subdomain

_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Matchers every query already has: a selector may not contradict them.
_OWN_MATCHERS = frozenset({"reporter", "source_workload_namespace"})
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'5m' -> 300.0 seconds; the Prometheus duration units ms, s, m, h, d, w (one unit only)."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h or 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class ControllerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prometheus_url: str = Field(
        "http://127.0.0.1:9090", description="Prometheus base URL the call metrics are read from."
    )
    prometheus_timeout_seconds: float = Field(
        30.0, gt=0, description="Timeout of one Prometheus query; a slow Prometheus fails the run (exit 3)."
    )
    prometheus_retries: int = Field(
        2, ge=0, le=10, description="Retries (with backoff) on connection errors and 5xx before giving up."
    )
    query_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Extra label matchers added to every query, e.g. {source_cluster: prod}; values are "
        "escaped.",
    )
    window: str = Field(
        "1h", description="How far back each run looks for calls (PromQL range, e.g. 30m, 1h, 1d)."
    )
    ttl: str = Field(
        "7d",
        description="A host leaves a workload's scope only after it was not seen for this long; one short "
        "query never removes anything.",
    )
    interval: str = Field("5m", description="Time between runs of `remixer controller loop`.")
    include_tcp: bool = Field(
        True, description="Also read istio_tcp_*_bytes_total: TCP services must be in scope to be reachable."
    )
    namespaces: list[str] = Field(
        default_factory=list, description="Only compute Sidecars for these namespaces; empty means all."
    )
    excluded_namespaces: list[str] = Field(
        default_factory=lambda: ["istio-system", "kube-system"],
        description="Namespaces never given a Sidecar (gateways ignore Sidecars; system pods are not ours).",
    )
    control_plane_namespace: str = Field(
        "istio-system",
        description="Istio's root namespace: always in every generated Sidecar (istiod, gateways, mesh-wide "
        "config), and never given a Sidecar.",
    )
    remixer_namespace: str = Field(
        "remixer",
        description="Namespace of remixer's own services (ext_authz, access-log sink): always in every "
        "generated Sidecar, so scoped proxies keep their authorization and access-log providers.",
    )
    mesh_config_map: str = Field(
        "istio",
        description="ConfigMap in the control-plane namespace holding the mesh config; with the kube sink "
        "the services of its extensionProviders are always in every generated Sidecar too.",
    )
    pinned_hosts: list[str] = Field(
        default_factory=list,
        description="More egress hosts (namespace/fqdn) every generated Sidecar includes (the control-plane "
        "and remixer namespaces always are).",
    )
    pinned_hosts_by_namespace: dict[str, list[str]] = Field(
        default_factory=dict, description="Extra pinned hosts per source namespace: {namespace: [hosts]}."
    )
    pinned_hosts_by_workload: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Extra pinned hosts per workload, keyed 'namespace/workload'.",
    )
    excluded_hosts: list[str] = Field(
        default_factory=list,
        description="Host patterns (shell-style, matched against namespace/fqdn) never added from telemetry.",
    )
    outbound_traffic_policy: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = Field(
        "ALLOW_ANY",
        description="outboundTrafficPolicy.mode of every generated Sidecar. ALLOW_ANY lets a first call to a "
        "host not yet in scope pass through (and be learnt); REGISTRY_ONLY refuses it (502) until a run "
        "adds the host.",
    )
    namespace_default_sidecar: bool = Field(
        False,
        description="Also write one selector-less Sidecar named 'default' per namespace, covering workloads "
        "with no data with the union of the namespace's dependencies plus ./*.",
    )
    cluster_domain: str = Field("cluster.local", description="Kubernetes cluster domain of service FQDNs.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL of the controller's dependency store (TTL); default "
        "sqlite+aiosqlite under the data directory.",
    )
    call_edges_database_url: str | None = Field(
        None,
        description="Database holding telemetry's call-edge table (passthrough discovery), e.g. "
        "postgresql://...; default: telemetry's default SQLite file DATA_DIR/edges.db when it exists. "
        "No database or no table means no call-edge input.",
    )
    call_edges_schema: str | None = Field(
        None, description="PostgreSQL schema of the call-edge table (telemetry's call_edges.schema_name)."
    )
    min_edges_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Refuse to write when a run sees fewer edges than this fraction of the last good run.",
    )
    max_removed_percent: float = Field(
        20.0,
        ge=0,
        le=100,
        description="Refuse a run that would remove more than this percentage of all scoped hosts "
        "(unless --force).",
    )
    max_removed_percent_per_workload: float = Field(
        50.0,
        ge=0,
        le=100,
        description="Refuse a run that would remove more than this percentage of one Sidecar's hosts "
        "(unless --force); the refusal names the workloads.",
    )
    edge_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="`controller loop`: how often the call-edge table is checked for a call to a host not "
        "yet in its caller's scope; such a call starts a run at once instead of at the next interval.",
    )
    sidecar_name_prefix: str = Field("remixer-", description="Prefix of generated Sidecar names.")
    owner_label: str = Field(
        "app.kubernetes.io/managed-by",
        description="Label marking Sidecars this controller owns; only those are ever updated or pruned.",
    )
    owner_value: str = Field("remixer-controller", description="Value of owner_label on our Sidecars.")
    field_manager: str = Field("remixer-controller", description="Server-side apply field manager name.")
    kubernetes_api_url: str | None = Field(
        None,
        description="Kubernetes API server URL for the kube sink; default: in-cluster service account, else "
        "the current kubeconfig context.",
    )

    @field_validator("query_selector")
    @classmethod
    def _check_selector(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _LABEL_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            if name in _OWN_MATCHERS:
                raise ValueError(f"{name!r} is set by the controller itself")
        return value

    @field_validator("control_plane_namespace", "remixer_namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _NAMESPACE.fullmatch(value):
            raise ValueError(f"{value!r} is not a namespace name (lowercase, digits and '-', <= 63)")
        return value

    @field_validator("sidecar_name_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if value and not is_dns_subdomain(value + "x"):
            raise ValueError(f"{value!r} cannot start a Kubernetes object name (lowercase, digits, '-', '.')")
        return value

    @field_validator("window", "ttl", "interval")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value
