"""The services the mesh's extension providers point at (meshConfig.extensionProviders), as egress hosts.

istio/api mesh/v1alpha1/config.proto: each provider (envoyExtAuthzGrpc, envoyExtAuthzHttp,
envoyHttpAls, envoyTcpAls, envoyOtelAls, opentelemetry, zipkin, skywalking, datadog, ...) names its
backend in `service`, formatted `[<Namespace>/]<Hostname>` with a fully qualified host name. A proxy
whose Sidecar does not import that service cannot reach the provider: istiod then turns a CUSTOM
AuthorizationPolicy into a deny, and access logs stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.core.edges import is_fqdn, is_namespace


def provider_hosts(mesh: Mapping[str, Any], cluster_domain: str) -> set[str]:
    hosts = set()
    for provider in mesh.get("extensionProviders") or []:
        if not isinstance(provider, Mapping):
            continue
        for config in provider.values():
            service = config.get("service") if isinstance(config, Mapping) else None
            if isinstance(service, str):
                host = _as_egress_host(service.strip().lower(), cluster_domain)
                if host is not None:
                    hosts.add(host)
    return hosts


def _as_egress_host(service: str, cluster_domain: str) -> str | None:
    namespace, slash, name = service.rpartition("/")
    if slash and not is_namespace(namespace):
        return None
    if not is_fqdn(name):
        return None
    if slash:
        return f"{namespace}/{name}"
    parts = name.split(".")
    if len(parts) >= 4 and ".".join(parts[2:]) == f"svc.{cluster_domain}" and is_namespace(parts[1]):
        return f"{parts[1]}/{name}"
    return f"*/{name}"
