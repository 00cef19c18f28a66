"""Synthetic Istio telemetry for backfilling a real Prometheus: istio_requests_total and TCP bytes."""

from __future__ import annotations

from collections.abc import Iterable

from tests.realparts.prometheus import Series

DOMAIN = "svc.cluster.local"


def fqdn(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.{DOMAIN}"


def counter(
    now: float, *, rate: float, minutes: int = 20, step: float = 60.0, start_minutes_ago: int = 0
) -> list[tuple[float, float]]:
    """A counter growing at `rate`/s, sampled every `step` seconds until `start_minutes_ago` before now."""
    end = now - start_minutes_ago * 60 - 5
    return [(end - (minutes * 60) + i * step, rate * i * step) for i in range(int(minutes * 60 / step) + 1)]


def call(
    now: float,
    *,
    source: tuple[str, str],
    service: tuple[str, str],
    destination_workload: str | None = None,
    reporter: str = "source",
    protocol: str = "http",
    code: str = "200",
    rate: float = 1.0,
    app: str | None = None,
    version: str = "v1",
    minutes: int = 20,
    start_minutes_ago: int = 0,
    extra: dict[str, str] | None = None,
) -> Series:
    """One istio_requests_total series: `source`=(namespace, workload) calling `service`=(namespace, name)."""
    source_ns, source_wl = source
    service_ns, service_name = service
    dest_wl = destination_workload or f"{service_name}-v1"
    labels = {
        "reporter": reporter,
        "source_workload_namespace": source_ns,
        "source_workload": source_wl,
        "source_app": app or source_wl.rsplit("-", 1)[0] if source_wl != "unknown" else "unknown",
        "source_version": version if source_wl != "unknown" else "unknown",
        "source_canonical_service": app or source_wl.rsplit("-", 1)[0]
        if source_wl != "unknown"
        else "unknown",
        "source_canonical_revision": version if source_wl != "unknown" else "unknown",
        "destination_service": fqdn(service_name, service_ns) if "." not in service_name else service_name,
        "destination_service_namespace": service_ns,
        "destination_service_name": service_name,
        "destination_workload_namespace": service_ns,
        "destination_workload": dest_wl,
        "destination_app": service_name,
        "destination_version": "v1",
        "destination_canonical_service": service_name,
        "destination_canonical_revision": "v1",
        "request_protocol": protocol,
        "response_code": code,
        "grpc_response_status": "0" if protocol == "grpc" else "",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls" if reporter == "destination" else "unknown",
        **(extra or {}),
    }
    metric = "istio_tcp_sent_bytes_total" if protocol == "tcp" else "istio_requests_total"
    if protocol == "tcp":
        for name in ("request_protocol", "response_code", "grpc_response_status"):
            labels.pop(name)
    return (metric, labels, counter(now, rate=rate, minutes=minutes, start_minutes_ago=start_minutes_ago))


def both_reporters(now: float, **kwargs: object) -> Iterable[Series]:
    yield call(now, reporter="source", **kwargs)  # type: ignore[arg-type]
    yield call(now, reporter="destination", **kwargs)  # type: ignore[arg-type]
