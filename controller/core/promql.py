"""The PromQL the controller issues, built with every label value escaped.

Queries follow Kiali's outgoing-traffic queries (reference/lazyxds.md §5): per reporter, the rate
of istio_requests_total (HTTP and gRPC) and of the TCP byte counters over the window, grouped by
source workload and destination service, `> 0` so idle series never count as calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

REQUEST_GROUP_BY = (
    "source_workload_namespace",
    "source_workload",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload_namespace",
    "destination_workload",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
)
TCP_GROUP_BY = tuple(label for label in REQUEST_GROUP_BY if label != "request_protocol")
SERVICE_GROUP_BY = ("destination_service_namespace", "destination_service", "destination_workload")

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

QueryKind = Literal["requests", "errors", "tcp_sent", "tcp_received", "services"]


@dataclass(frozen=True, slots=True)
class Query:
    kind: QueryKind
    reporter: Literal["source", "destination"]
    promql: str


def escape_value(value: str) -> str:
    """A string as the body of a double-quoted PromQL literal (Go escapes: backslash, quote, newline)."""
    return (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )


def escape_regex_alternatives(values: Iterable[str]) -> str:
    """Literal values as one anchored RE2 alternation (Prometheus anchors =~ itself)."""
    return "|".join(re.escape(value) for value in sorted(set(values)))


def matcher(name: str, op: Literal["=", "!=", "=~", "!~"], value: str) -> str:
    if not _LABEL_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    return f'{name}{op}"{escape_value(value)}"'


def selector(
    *,
    reporter: str,
    namespaces: Iterable[str],
    extra: Mapping[str, str],
    more: Iterable[str] = (),
) -> str:
    parts = [matcher("reporter", "=", reporter)]
    namespace_list = sorted(set(namespaces))
    if namespace_list:
        parts.append(matcher("source_workload_namespace", "=~", escape_regex_alternatives(namespace_list)))
    parts.extend(matcher(name, "=", value) for name, value in sorted(extra.items()))
    parts.extend(more)
    return "{" + ",".join(parts) + "}"


def _rate_sum(metric: str, label_selector: str, window: str, group_by: Iterable[str]) -> str:
    return f"sum by ({','.join(group_by)}) (rate({metric}{label_selector}[{window}]))"


def build_queries(
    *,
    window: str,
    namespaces: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
    include_tcp: bool = True,
) -> list[Query]:
    """All queries of one run, source reporter first (its rows win over destination-reported ones)."""
    extra = extra or {}
    namespace_list = list(namespaces)
    queries: list[Query] = []
    for reporter in ("source", "destination"):
        base = selector(reporter=reporter, namespaces=namespace_list, extra=extra)
        http_errors = selector(
            reporter=reporter,
            namespaces=namespace_list,
            extra=extra,
            more=[matcher("response_code", "=~", "[45]..")],
        )
        grpc_errors = selector(
            reporter=reporter,
            namespaces=namespace_list,
            extra=extra,
            more=[
                matcher("response_code", "!~", "[45].."),
                matcher("request_protocol", "=", "grpc"),
                matcher("grpc_response_status", "!~", "0|"),
            ],
        )
        queries.append(
            Query(
                "requests",
                reporter,
                _rate_sum("istio_requests_total", base, window, REQUEST_GROUP_BY) + " > 0",
            )
        )
        errors = (
            f"({_rate_sum('istio_requests_total', http_errors, window, REQUEST_GROUP_BY)}"
            f" or {_rate_sum('istio_requests_total', grpc_errors, window, REQUEST_GROUP_BY)}) > 0"
        )
        queries.append(Query("errors", reporter, errors))
        if include_tcp:
            for kind, metric in (
                ("tcp_sent", "istio_tcp_sent_bytes_total"),
                ("tcp_received", "istio_tcp_received_bytes_total"),
            ):
                queries.append(
                    Query(kind, reporter, _rate_sum(metric, base, window, TCP_GROUP_BY) + " > 0")  # type: ignore[arg-type]
                )
    return queries


def services_query(*, window: str, extra: Mapping[str, str] | None = None) -> Query:
    """Every service seen as a destination in the window, with the workloads behind it (endpoint estimate)."""
    label_selector = selector(reporter="destination", namespaces=(), extra=extra or {})
    promql = (
        f"group by ({','.join(SERVICE_GROUP_BY)}) "
        f"(last_over_time(istio_requests_total{label_selector}[{window}]))"
    )
    return Query("services", "destination", promql)
