"""Source of remixer's Grafana dashboards: `python deploy/grafana/dashboards.py` rewrites dashboards/*.json.

Plain data, no library: each dashboard is a list of rows of panels, each panel a few PromQL targets. The mesh
and service boards follow the PromQL of Istio's own dashboards (istio/istio manifests/addons/dashboards), so
they read remixer's Istio-standard metrics exactly as they read a sidecar's. tests/deploy checks that the
JSON files are this script's output and runs every target against a real Prometheus fed by remixer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"

HTTP = 'istio_requests_total{reporter=~"source|waypoint"}'
RATE = "[$__rate_interval]"
ACCESS_LOG_DROPS = 'remixer_shipping_records_dropped_total{stream="access-logs"}'


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"  # timeseries | stat
    unit: str = "short"
    description: str = ""
    width: int = 12


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    query: str = ""  # label_values(...) or query_result(...) for a query variable
    options: tuple[str, ...] = ()  # for a custom variable
    label: str = ""
    regex: str = ""  # extracts the value from each query_result line


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[Panel, ...], ...]
    variables: tuple[Variable, ...] = field(default=())
    tags: tuple[str, ...] = ("remixer",)


def q(expr: str, legend: str = "") -> Target:
    return Target(" ".join(expr.split()), legend)


def quantiles(
    metric: str, selector: str, by: str, scale: str = "", legend_prefix: str = ""
) -> tuple[Target, ...]:
    """P50 / P90 / P99 of a histogram, Istio-dashboard style."""
    targets = []
    for quantile in ("0.50", "0.90", "0.99"):
        expr = (
            f"histogram_quantile({quantile}, sum by (le{by}) (rate({metric}_bucket{selector}{RATE}))){scale}"
        )
        name = f"P{quantile[2:4]}"
        targets.append(q(expr, f"{legend_prefix}{name}"))
    return tuple(targets)


# ---- mesh overview (istio-mesh-dashboard) ------------------------------------------------------------------

MESH = Dashboard(
    uid="remixer-mesh",
    title="remixer / Mesh overview",
    description="Istio-standard metrics as exported by remixer from Envoy access logs: the whole mesh.",
    rows=(
        (
            Panel(
                "Global request volume",
                (q(f"round(sum(rate({HTTP}{RATE})), 0.01)", "ops"),),
                kind="stat",
                unit="reqps",
                width=6,
            ),
            Panel(
                "Global success rate (non-5xx)",
                (
                    q(
                        f'sum(rate(istio_requests_total{{reporter=~"source|waypoint",response_code!~"5.."}}{RATE}))'
                        f" / sum(rate({HTTP}{RATE}))"
                    ),
                ),
                kind="stat",
                unit="percentunit",
                width=6,
            ),
            Panel(
                "4xxs",
                (
                    q(
                        f'round(sum(rate(istio_requests_total{{reporter=~"source|waypoint",response_code=~"4.."}}'
                        f"{RATE})), 0.01) or vector(0)"
                    ),
                ),
                kind="stat",
                unit="reqps",
                width=6,
            ),
            Panel(
                "5xxs",
                (
                    q(
                        f'round(sum(rate(istio_requests_total{{reporter=~"source|waypoint",response_code=~"5.."}}'
                        f"{RATE})), 0.01) or vector(0)"
                    ),
                ),
                kind="stat",
                unit="reqps",
                width=6,
            ),
        ),
        (
            Panel(
                "Requests by destination service",
                (q(f"sum by (destination_service) (rate({HTTP}{RATE}))", "{{destination_service}}"),),
                unit="reqps",
            ),
            Panel(
                "Success rate by destination service",
                (
                    q(
                        'sum by (destination_service) (rate(istio_requests_total{reporter=~"source|waypoint",'
                        f'response_code!~"5.."}}{RATE})) / sum by (destination_service) (rate({HTTP}{RATE}))',
                        "{{destination_service}}",
                    ),
                ),
                unit="percentunit",
            ),
        ),
        (
            Panel(
                "4xx and 5xx by destination service",
                (
                    q(
                        "sum by (destination_service, response_code) (rate(istio_requests_total"
                        f'{{reporter=~"source|waypoint",response_code=~"[45].."}}{RATE}))',
                        "{{destination_service}} {{response_code}}",
                    ),
                ),
                unit="reqps",
                description="Seed of the 404-surge and 5xx-ratio alerts: which service answers errors.",
            ),
            Panel(
                "Request duration by destination service",
                quantiles(
                    "istio_request_duration_milliseconds",
                    '{reporter=~"source|waypoint"}',
                    ", destination_service",
                    legend_prefix="{{destination_service}} ",
                ),
                unit="ms",
            ),
        ),
        (
            Panel(
                "TCP bytes by destination service",
                (
                    q(
                        "sum by (destination_service) (rate(istio_tcp_sent_bytes_total"
                        f'{{reporter=~"source|waypoint"}}{RATE}))',
                        "{{destination_service}} sent",
                    ),
                    q(
                        "sum by (destination_service) (rate(istio_tcp_received_bytes_total"
                        f'{{reporter=~"source|waypoint"}}{RATE}))',
                        "{{destination_service}} received",
                    ),
                ),
                unit="Bps",
            ),
            Panel(
                "TCP connections opened by destination service",
                (
                    q(
                        "sum by (destination_service) (rate(istio_tcp_connections_opened_total"
                        f'{{reporter=~"source|waypoint"}}{RATE}))',
                        "{{destination_service}}",
                    ),
                ),
                unit="cps",
            ),
        ),
    ),
    tags=("remixer", "istio"),
)

# ---- service detail (istio-service-dashboard) ------------------------------------------------------------

SVC = 'reporter=~"$qrep",destination_service=~"$service"'

SERVICE = Dashboard(
    uid="remixer-service",
    title="remixer / Service detail",
    description="One destination service, as its clients (reporter=source) or its own sidecars "
    "(reporter=destination) see it.",
    variables=(
        # As Istio's service dashboard: HTTP and TCP services both.
        Variable(
            "service",
            "query_result(sum by (destination_service) (istio_requests_total) "
            "or sum by (destination_service) (istio_tcp_sent_bytes_total))",
            label="Service",
            regex='/.*destination_service="([^"]*)".*/',
        ),
        Variable("qrep", options=("destination", "source|waypoint"), label="Reporter"),
    ),
    rows=(
        (
            Panel(
                "Request volume",
                (q(f"round(sum(rate(istio_requests_total{{{SVC}}}{RATE})), 0.001)", "ops"),),
                kind="stat",
                unit="reqps",
                width=8,
            ),
            Panel(
                "Success rate (non-5xx)",
                (
                    q(
                        f'sum(rate(istio_requests_total{{{SVC},response_code!~"5.*"}}{RATE})) / '
                        f"(sum(rate(istio_requests_total{{{SVC}}}{RATE})) or on () vector(1))"
                    ),
                ),
                kind="stat",
                unit="percentunit",
                width=8,
            ),
            Panel(
                "P90 duration",
                (
                    q(
                        "histogram_quantile(0.90, sum by (le) "
                        f"(rate(istio_request_duration_milliseconds_bucket{{{SVC}}}{RATE}))) / 1000"
                    ),
                ),
                kind="stat",
                unit="s",
                width=8,
            ),
        ),
        (
            Panel(
                "Requests by source and response code",
                (
                    q(
                        "round(sum by (source_workload, source_workload_namespace, response_code) "
                        f"(rate(istio_requests_total{{{SVC}}}{RATE})), 0.001)",
                        "{{source_workload}}.{{source_workload_namespace}} {{response_code}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Request duration",
                quantiles("istio_request_duration_milliseconds", f"{{{SVC}}}", "", scale=" / 1000"),
                unit="s",
            ),
        ),
        (
            Panel(
                "4xx and 5xx by response code",
                (
                    q(
                        "sum by (response_code) "
                        f'(rate(istio_requests_total{{{SVC},response_code=~"[45].."}}{RATE}))',
                        "{{response_code}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Request and response size",
                (
                    q(
                        "histogram_quantile(0.50, sum by (le) (rate(istio_request_bytes_bucket"
                        f"{{{SVC}}}{RATE})))",
                        "request P50",
                    ),
                    q(
                        "histogram_quantile(0.50, sum by (le) (rate(istio_response_bytes_bucket"
                        f"{{{SVC}}}{RATE})))",
                        "response P50",
                    ),
                    q(
                        "histogram_quantile(0.99, sum by (le) (rate(istio_response_bytes_bucket"
                        f"{{{SVC}}}{RATE})))",
                        "response P99",
                    ),
                ),
                unit="bytes",
            ),
        ),
        (
            Panel(
                "TCP traffic",
                (
                    q(f"sum(rate(istio_tcp_sent_bytes_total{{{SVC}}}{RATE}))", "sent"),
                    q(f"sum(rate(istio_tcp_received_bytes_total{{{SVC}}}{RATE}))", "received"),
                ),
                unit="Bps",
                width=24,
            ),
        ),
    ),
    tags=("remixer", "istio"),
)

# ---- remixer policy ----------------------------------------------------------------------------------------

POLICY = Dashboard(
    uid="remixer-policy",
    title="remixer / Policy",
    description="The ext_authz Check service: decisions, deciding rules, cache, quotas, store freshness.",
    rows=(
        (
            Panel(
                "Checks by decision",
                (q(f"sum by (decision) (rate(remixer_policy_checks_total{RATE}))", "{{decision}}"),),
                unit="reqps",
            ),
            Panel(
                "Top deciding rules",
                (
                    q(
                        f"topk(10, sum by (rule, decision) (rate(remixer_policy_checks_total{RATE})))",
                        "{{rule}} {{decision}}",
                    ),
                ),
                unit="reqps",
            ),
        ),
        (
            Panel(
                "Check latency",
                quantiles("remixer_policy_check_duration_seconds", "", ""),
                unit="s",
            ),
            Panel(
                "Decision cache hit ratio",
                (
                    q(
                        f"sum(rate(remixer_policy_cache_hits_total{RATE})) / "
                        f"(sum(rate(remixer_policy_cache_hits_total{RATE})) "
                        f"+ sum(rate(remixer_policy_cache_misses_total{RATE})))"
                    ),
                ),
                unit="percentunit",
            ),
        ),
        (
            Panel(
                "Quota rejections by limit",
                (
                    q(
                        f"sum by (limit, shadow) (rate(remixer_policy_quota_rejections_total{RATE}))",
                        "{{limit}} shadow={{shadow}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Dry-run rule matches",
                (q(f"sum by (rule) (rate(remixer_policy_dry_run_matches_total{RATE}))", "{{rule}}"),),
                unit="reqps",
            ),
        ),
        (
            Panel(
                "Rules enforced",
                (q("max(remixer_policy_rules)", "rules"), q("max(remixer_policy_revision)", "revision")),
                kind="stat",
                width=8,
            ),
            Panel(
                "Policy store staleness",
                (q("max(remixer_policy_store_staleness_seconds)"),),
                kind="stat",
                unit="s",
                width=8,
            ),
            Panel(
                "Reload errors and dropped decision logs",
                (
                    # Labelled error counters appear at the first error; until then the normal state is 0.
                    q(f"sum(rate(remixer_policy_reload_errors_total{RATE})) or vector(0)", "reload errors"),
                    q(f"sum(rate(remixer_policy_decision_log_dropped_total{RATE}))", "decision logs dropped"),
                ),
                unit="ops",
                width=8,
            ),
        ),
    ),
)

# ---- telemetry pipeline ------------------------------------------------------------------------------------

SHIPPING_ROWS: tuple[tuple[Panel, ...], ...] = (
    (
        Panel(
            "Kafka: records acknowledged and spooled",
            (
                q(f"sum by (stream) (rate(remixer_shipping_records_sent_total{RATE}))", "{{stream}} sent"),
                q(
                    f"sum by (stream) (rate(remixer_shipping_records_spooled_total{RATE}))",
                    "{{stream}} spooled",
                ),
            ),
            unit="ops",
            description="Access-log and decision records; spooled = waiting on local disk for Kafka.",
        ),
        Panel(
            "Kafka: send latency",
            quantiles("remixer_shipping_send_seconds", "", ", stream", legend_prefix="{{stream}} "),
            unit="s",
        ),
    ),
    (
        Panel(
            "Kafka connected",
            (q("min(remixer_shipping_kafka_connected)"),),
            kind="stat",
            width=6,
            description="1 while every pod has a connected producer (0 when Kafka export is off or away).",
        ),
        Panel(
            "Spool fill",
            (
                q(
                    "max by (stream) (remixer_shipping_spool_bytes) / "
                    "scalar(max(remixer_shipping_spool_limit_bytes))",
                    "{{stream}}",
                ),
            ),
            unit="percentunit",
            width=6,
        ),
        Panel(
            "Oldest spooled and queued records",
            (
                q("max by (stream) (remixer_shipping_spool_oldest_seconds)", "{{stream}} oldest spooled (s)"),
                q("sum by (stream) (remixer_shipping_queue_records)", "{{stream}} queued"),
            ),
        ),
    ),
    (
        Panel(
            "Kafka send errors and dropped records",
            (
                q(
                    f"sum by (stream) (rate(remixer_shipping_send_errors_total{RATE}))",
                    "{{stream}} send errors",
                ),
                # Labelled by reason, so absent until the first drop; 0 is the normal state.
                q(
                    "sum by (stream, reason) "
                    f"(rate(remixer_shipping_records_dropped_total{RATE})) or vector(0)",
                    "{{stream}} dropped ({{reason}})",
                ),
            ),
            unit="ops",
            width=24,
        ),
    ),
)


TELEMETRY = Dashboard(
    uid="remixer-telemetry",
    title="remixer / Telemetry pipeline",
    description="Access logs from Envoy into remixer: ingest, series, export to Kafka / spool, drops.",
    rows=(
        (
            Panel(
                "Entries received by kind",
                (q(f"sum by (kind) (rate(remixer_telemetry_entries_received_total{RATE}))", "{{kind}}"),),
                unit="ops",
            ),
            Panel(
                "Records exported and dropped",
                (
                    q(f"sum(rate(remixer_telemetry_records_exported_total{RATE}))", "exported"),
                    q(f"sum(rate({ACCESS_LOG_DROPS}{RATE})) or vector(0)", "dropped"),
                ),
                unit="ops",
            ),
        ),
        (
            Panel(
                "Entries per StreamAccessLogs message",
                quantiles("remixer_telemetry_batch_entries", "", ""),
            ),
            Panel(
                "Open access-log streams",
                (q("sum(remixer_telemetry_streams)", "streams"),),
            ),
        ),
        (
            Panel(
                "Series held vs cap",
                (
                    q("max by (family) (remixer_telemetry_series)", "{{family}}"),
                    q("max(remixer_telemetry_series_limit)", "cap"),
                ),
            ),
            Panel(
                "Labels derived as unknown",
                (
                    q(
                        f"topk(10, sum by (label) (rate(remixer_telemetry_label_misses_total{RATE})))",
                        "{{label}}",
                    ),
                ),
                unit="ops",
            ),
        ),
        *SHIPPING_ROWS,
    ),
)

# ---- controller ---------------------------------------------------------------------------------------

CONTROLLER = Dashboard(
    uid="remixer-controller",
    title="remixer / Sidecar controller",
    description="Runs, scopes written, and the estimated xDS shrink from Sidecar scoping.",
    rows=(
        (
            Panel(
                "Runs by outcome",
                (q("sum by (outcome) (increase(remixer_controller_runs_total[1h]))", "{{outcome}}"),),
            ),
            Panel(
                "Since last successful run",
                (q("time() - max(remixer_controller_last_success_timestamp_seconds)"),),
                kind="stat",
                unit="s",
                width=6,
            ),
            Panel(
                "Call edges in the last run",
                (q("max(remixer_controller_call_edges)", "edges"),),
                kind="stat",
                width=6,
            ),
        ),
        (
            Panel(
                "Estimated outbound clusters pushed (all proxies)",
                (q("max by (scope) (remixer_controller_xds_clusters)", "{{scope}}"),),
            ),
            Panel(
                "Estimated xDS shrink",
                (
                    q(
                        '1 - max(remixer_controller_xds_clusters{scope="after"}) / '
                        'max(remixer_controller_xds_clusters{scope="before"})',
                        "clusters",
                    ),
                    q(
                        '1 - max(remixer_controller_xds_endpoints{scope="after"}) / '
                        'max(remixer_controller_xds_endpoints{scope="before"})',
                        "endpoints",
                    ),
                ),
                unit="percentunit",
            ),
        ),
        (
            Panel(
                "Sidecars written and deleted, hosts added and removed",
                (
                    q("sum(increase(remixer_controller_sidecars_written_total[1h]))", "sidecars written"),
                    q("sum(increase(remixer_controller_sidecars_deleted_total[1h]))", "sidecars deleted"),
                    q("sum(increase(remixer_controller_hosts_added_total[1h]))", "hosts added"),
                    q("sum(increase(remixer_controller_hosts_removed_total[1h]))", "hosts removed"),
                ),
            ),
            Panel(
                "Run duration",
                (
                    q(
                        "histogram_quantile(0.90, sum by (le) "
                        "(rate(remixer_controller_run_duration_seconds_bucket[1h])))",
                        "P90",
                    ),
                ),
                unit="s",
            ),
        ),
    ),
)

# ---- adaptive limits ---------------------------------------------------------------------------------------

RULE = 'rule=~"$rule"'

ADAPTIVE = Dashboard(
    uid="remixer-adaptive",
    title="remixer / Adaptive limits",
    description="Each adaptive limit's controller: the signal against its setpoint, the PID terms, the limit "
    "it set within its bounds, and what each caller had admitted or shed.",
    variables=(Variable("rule", "label_values(remixer_adaptive_limit, rule)", label="Rule"),),
    rows=(
        (
            Panel(
                "Limit within its bounds",
                (
                    q(f"max by (rule) (remixer_adaptive_limit{{{RULE}}})", "{{rule}} limit"),
                    q(f"max by (rule, bound) (remixer_adaptive_bound{{{RULE}}})", "{{rule}} {{bound}}"),
                ),
                unit="reqps",
            ),
            Panel(
                "Signal and setpoint",
                (
                    q(f"max by (rule, signal) (remixer_adaptive_signal{{{RULE}}})", "{{rule}} {{signal}}"),
                    q(
                        f"max by (rule, signal) (remixer_adaptive_setpoint{{{RULE}}})",
                        "{{rule}} {{signal}} setpoint",
                    ),
                ),
                description="Latency signals in ms, error_ratio as a fraction, concurrency in requests.",
            ),
        ),
        (
            Panel(
                "Steering signal (reading / setpoint)",
                (q(f"max by (rule) (remixer_adaptive_measured_ratio{{{RULE}}})", "{{rule}}"),),
                description="1 is on target; the controller clips it to [0, 2].",
            ),
            Panel(
                "PID terms",
                (q(f"max by (rule, term) (remixer_adaptive_term{{{RULE}}})", "{{rule}} {{term}}"),),
                description="In log-limit units: limit = max_rate x exp(P + I + D).",
            ),
        ),
        (
            Panel(
                "Admitted and rejected by caller",
                (
                    q(
                        "sum by (rule, caller, decision) "
                        f"(rate(remixer_adaptive_requests_total{{{RULE}}}{RATE}))",
                        "{{rule}} {{caller}} {{decision}}",
                    ),
                ),
                unit="reqps",
                description="Dry-run rules count what they would have rejected.",
            ),
            Panel(
                "Each caller's part of the limit",
                (
                    q(
                        f"max by (rule, caller) (remixer_adaptive_caller_limit{{{RULE}}})",
                        "{{rule}} {{caller}}",
                    ),
                ),
                unit="reqps",
            ),
        ),
        (
            Panel(
                "Replicas computing (should be 1)",
                (q("sum(remixer_adaptive_leader)"),),
                kind="stat",
                width=8,
            ),
            Panel(
                "Controller mode",
                (q(f"max by (rule, mode) (remixer_adaptive_mode{{{RULE}}}) == 1", "{{rule}} {{mode}}"),),
                kind="stat",
                width=8,
                description="track: following the signal; hold: no fresh signal; decay: back to max_rate.",
            ),
            Panel(
                "Dry-run rules",
                (q(f"max by (rule) (remixer_adaptive_dry_run{{{RULE}}})", "{{rule}}"),),
                kind="stat",
                width=8,
            ),
        ),
    ),
)

DASHBOARDS = (MESH, SERVICE, POLICY, TELEMETRY, CONTROLLER, ADAPTIVE)


# ---- rendering to Grafana's dashboard JSON model -----------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    height = 5 if panel.kind == "stat" else 8
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if panel.kind == "timeseries"
        else {},
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend,
                "refId": chr(ord("A") + index),
            }
            for index, target in enumerate(panel.targets)
        ],
    }
    if panel.description:
        out["description"] = panel.description
    return out


def _variable_json(var: Variable) -> dict[str, Any]:
    if var.options:
        return {
            "name": var.name,
            "label": var.label or var.name,
            "type": "custom",
            "query": ",".join(var.options),
            "current": {"text": var.options[0], "value": var.options[0]},
            "options": [{"text": o, "value": o, "selected": i == 0} for i, o in enumerate(var.options)],
        }
    return {
        "name": var.name,
        "label": var.label or var.name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": var.query, "refId": "StandardVariableQuery"},
        "definition": var.query,
        "refresh": 2,
        "sort": 1,
        "regex": var.regex,
    }


def render(board: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    for row in board.rows:
        x = 0
        for panel in row:
            panels.append(_panel_json(panel, len(panels) + 1, x, y))
            x += panel.width
        y += max(5 if p.kind == "stat" else 8 for p in row)
    datasource_var = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
    }
    return {
        "uid": board.uid,
        "title": board.title,
        "description": board.description,
        "tags": list(board.tags),
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [datasource_var, *(_variable_json(v) for v in board.variables)]},
        "annotations": {"list": []},
        "panels": panels,
    }


def file_name(board: Dashboard) -> str:
    return f"{board.uid}.json"


def rendered_files() -> dict[str, str]:
    return {file_name(b): json.dumps(render(b), indent=2, sort_keys=False) + "\n" for b in DASHBOARDS}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in rendered_files().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
