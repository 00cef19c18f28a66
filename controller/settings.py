"""The controller's section of remixer's settings (`controller:` in YAML, `REMIXER_CONTROLLER__*` in env)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'5m' -> 300.0 seconds; the Prometheus duration units ms, s, m, h, d, w (one unit only)."""
    match = _DURATION.match(text.strip())
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
    pinned_hosts: list[str] = Field(
        default_factory=lambda: ["istio-system/*"],
        description="Egress hosts (namespace/fqdn) every generated Sidecar includes.",
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

    @field_validator("window", "ttl", "interval")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value
