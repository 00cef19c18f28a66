"""`remixer controller run-once | loop | graph`: argument builders the lead's `remixer` CLI mounts.

Exit codes: 0 wrote or nothing to write, 1 refused by a guard, 2 bad usage, 3 source (or sink) failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from controller.core import graph
from controller.errors import ControllerError, UsageError
from controller.settings import ControllerSettings, parse_duration
from controller.structs import RunSummary

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_SOURCE = 0, 1, 2, 3
_LISTED = 20  # workloads without a Sidecar listed in the table summary
_EXIT_BY_OUTCOME = {"wrote": 0, "nothing-to-write": 0, "dry-run": 0, "refused": 1, "source-failure": 3}


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus-url", help="Prometheus base URL (default: settings prometheus_url).")
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="Only this source namespace (repeatable); default: all (or settings namespaces).",
    )
    parser.add_argument(
        "--window", help="How far back to look for calls, e.g. 30m, 1h (default: settings window)."
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    _add_source_options(parser)
    parser.add_argument(
        "--sink",
        default="stdout",
        help="Where Sidecars go: dir:PATH (one YAML file each, for GitOps), kube (server-side apply), "
        "stdout (a YAML stream for kubectl apply -f -). Default: stdout.",
    )
    parser.add_argument(
        "--ttl", help="Keep a host in scope until unseen this long, e.g. 7d (default: settings)."
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="Compute and report; write nothing (kube: dryRun=All)."
    )
    parser.add_argument("--force", action="store_true", help="Write even if the removal guard would refuse.")
    parser.add_argument("--output", choices=("table", "json"), default="table", help="Summary format.")
    parser.add_argument("--database-url", help="SQLAlchemy async URL of the dependency store (TTL).")
    parser.add_argument(
        "--data-dir", type=Path, help="Where the default SQLite store lives (default: remixer-data)."
    )
    parser.add_argument(
        "--kube-api-url", help="Kubernetes API server URL for --sink kube (default: in-cluster)."
    )
    parser.add_argument(
        "--graph-export",
        choices=graph.FORMATS,
        metavar="FORMAT",
        help="Also write the graph: json, dot or graphml.",
    )
    parser.add_argument("--graph-out", type=Path, help="File for --graph-export (default: stdout).")
    parser.add_argument(
        "--graph-view", choices=graph.VIEWS, default="workload", help="View for --graph-export."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the controller's subcommands to `parser` (the lead mounts it as `remixer controller`)."""
    commands = parser.add_subparsers(dest="controller_command", metavar="COMMAND", required=True)
    run_once = commands.add_parser(
        "run-once", help="Read call metrics once, write the Sidecars that changed, print a summary."
    )
    _add_run_options(run_once)
    loop = commands.add_parser(
        "loop",
        help="Run forever, every --interval, with the same logic, and at once when the call-edge table shows "
        "a call to a host outside its caller's scope; exposes metrics.",
    )
    _add_run_options(loop)
    loop.add_argument("--interval", help="Time between runs, e.g. 5m (default: settings interval).")
    loop.add_argument(
        "--metrics-address",
        default="127.0.0.1:9464",
        help="host:port for the loop's own /metrics ('' to disable).",
    )
    export = commands.add_parser("graph", help="Print the call graph (JSON, DOT or GraphML).")
    _add_source_options(export)
    export.add_argument("--view", choices=graph.VIEWS, default="workload", help="Kiali-style graph view.")
    export.add_argument("--format", choices=graph.FORMATS, default="json", help="Output format.")
    export.add_argument("--out", type=Path, help="Output file (default: stdout).")


def _effective_settings(args: argparse.Namespace, settings: ControllerSettings) -> ControllerSettings:
    updates: dict[str, Any] = {}
    for option, name in (
        ("prometheus_url", "prometheus_url"),
        ("window", "window"),
        ("ttl", "ttl"),
        ("interval", "interval"),
        ("database_url", "database_url"),
        ("kube_api_url", "kubernetes_api_url"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            updates[name] = value
    try:
        return ControllerSettings.model_validate({**settings.model_dump(), **updates})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise UsageError(problems) from None


def run(args: argparse.Namespace, settings: ControllerSettings, *, data_dir: Path | None = None) -> int:
    """Run the chosen subcommand; returns the process exit code."""
    try:
        effective = _effective_settings(args, settings)
        if args.controller_command == "graph":
            return asyncio.run(_graph(args, effective))
        from controller.app import parse_sink

        parse_sink(args.sink)
        base_dir = getattr(args, "data_dir", None) or data_dir or Path("remixer-data")
        if args.controller_command == "loop":
            return asyncio.run(_loop(args, effective, base_dir))
        return asyncio.run(_run_once(args, effective, base_dir))
    except UsageError as error:
        print(f"remixer controller: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ControllerError as error:
        print(f"remixer controller: {error}", file=sys.stderr)
        return error.exit_code


def _summary_stream(args: argparse.Namespace) -> TextIO:
    # With the stdout sink, stdout carries the YAML stream; the summary must not corrupt it.
    return sys.stderr if args.sink == "stdout" else sys.stdout


async def _run_once(args: argparse.Namespace, settings: ControllerSettings, data_dir: Path) -> int:
    from controller.app import compose

    composition = await compose(settings, sink_spec=args.sink, data_dir=data_dir, namespaces=args.namespace)
    try:
        summary = await composition.reconciler.run_once(
            now=time.time(), dry_run=args.dry_run, force=args.force
        )
        if args.graph_export and summary.outcome != "source-failure":
            await _export_graph(args, settings, args.graph_export, args.graph_view, args.graph_out)
    finally:
        await composition.close()
    print_summary(summary, args.output, _summary_stream(args))
    return _EXIT_BY_OUTCOME[summary.outcome]


async def _export_graph(
    args: argparse.Namespace, settings: ControllerSettings, fmt: str, view: str, out: Path | None
) -> None:
    from controller.app import make_source
    from controller.reconciling import observe_sources

    source = make_source(settings)
    try:
        found = await observe_sources(
            settings=settings, metrics_source=source, call_edges=None, now=time.time(), namespaces=[]
        )
    finally:
        source.close()
    namespace = args.namespace[0] if len(args.namespace) == 1 else None
    text = graph.export(graph.build_view(found.edges, view, namespace), fmt)  # type: ignore[arg-type]
    if out is None:
        sys.stdout.write(text)
    else:
        await asyncio.to_thread(out.write_text, text, encoding="utf-8")


async def _graph(args: argparse.Namespace, settings: ControllerSettings) -> int:
    await _export_graph(args, settings, args.format, args.view, args.out)
    return EXIT_OK


async def _loop(args: argparse.Namespace, settings: ControllerSettings, data_dir: Path) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from controller.adapters.metrics import ControllerMetrics
    from controller.app import compose
    from controller.reconciling import loop

    registry = CollectorRegistry()
    if args.metrics_address:
        host, _, port = args.metrics_address.rpartition(":")
        if not port.isdigit():
            raise UsageError(f"--metrics-address {args.metrics_address!r} is not host:port")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    composition = await compose(
        settings, sink_spec=args.sink, data_dir=data_dir, namespaces=args.namespace, registry=registry
    )
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            running.add_signal_handler(signum, stop.set)
    metrics = composition.reconciler.observer

    def count_trigger(_fresh: object) -> None:
        if isinstance(metrics, ControllerMetrics):
            metrics.edge_triggers.inc()

    try:
        await loop(
            composition.reconciler,
            interval=parse_duration(settings.interval),
            stop=stop,
            force=args.force,
            dry_run=args.dry_run,
            on_edge_trigger=count_trigger,
        )
    finally:
        await composition.close()
    return EXIT_OK


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    shrink = summary.shrink
    return {
        "outcome": summary.outcome,
        "message": summary.message,
        "edges": summary.edges,
        "workloads": summary.workloads,
        "written": summary.written,
        "deleted": summary.deleted,
        "failed": summary.failed,
        "unchanged": summary.unchanged,
        "skipped_rows": summary.skipped_rows,
        "changes": [
            {
                "namespace": c.namespace,
                "sidecar": c.name,
                "action": c.action,
                "added": list(c.added),
                "removed": list(c.removed),
                **({"reason": c.reason} if c.reason else {}),
            }
            for c in summary.changes
            if c.action != "unchanged"
        ],
        "xds_estimate": None
        if shrink is None
        else {
            "workloads": shrink.workloads,
            "clusters_before": shrink.clusters_before,
            "clusters_after": shrink.clusters_after,
            "cluster_reduction": round(shrink.cluster_reduction, 4),
            "endpoints_before": shrink.endpoints_before,
            "endpoints_after": shrink.endpoints_after,
            "endpoint_reduction": round(shrink.endpoint_reduction, 4),
            "per_sidecar": [
                {"sidecar": name, "clusters_before": before, "clusters_after": after}
                for name, before, after in shrink.per_sidecar
            ],
        },
        **summary.extra,
    }


def print_summary(summary: RunSummary, output: str, stream: TextIO) -> None:
    if output == "json":
        stream.write(json.dumps(summary_dict(summary), indent=2) + "\n")
        return
    changed = [c for c in summary.changes if c.action != "unchanged"]
    if changed:
        width = max(len(f"{c.namespace}/{c.name}") for c in changed)
        stream.write(f"{'SIDECAR':<{width}}  {'ACTION':<9} {'+HOSTS':>6} {'-HOSTS':>6}  NOTE\n")
        for c in changed:
            stream.write(
                f"{c.namespace + '/' + c.name:<{width}}  {c.action:<9} "
                f"{len(c.added):>6} {len(c.removed):>6}  {c.reason}\n"
            )
    stream.write(
        f"{summary.outcome}: {summary.message}\n"
        f"workloads {summary.workloads}, call edges {summary.edges}, written {summary.written}, "
        f"deleted {summary.deleted}, failed {summary.failed}, unchanged {summary.unchanged}, "
        f"skipped telemetry rows {summary.skipped_rows}\n"
    )
    no_sidecar = summary.extra.get("no_sidecar") or []
    if no_sidecar:
        stream.write(f"no Sidecar for {len(no_sidecar)} workloads (they keep the default scope):\n")
        for line in no_sidecar[:_LISTED]:
            stream.write(f"  {line}\n")
        if len(no_sidecar) > _LISTED:
            stream.write(f"  ... and {len(no_sidecar) - _LISTED} more (--output json lists all)\n")
    for note in summary.extra.get("notes") or []:
        stream.write(f"note: {note}\n")
    if summary.shrink is not None:
        s = summary.shrink
        stream.write(
            f"xDS estimate over {s.workloads} workloads: clusters {s.clusters_before} -> {s.clusters_after} "
            f"(-{s.cluster_reduction:.1%}), endpoints {s.endpoints_before} -> {s.endpoints_after} "
            f"(-{s.endpoint_reduction:.1%})\n"
        )
