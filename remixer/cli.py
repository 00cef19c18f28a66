"""The `remixer` command: serve, controller, adaptive, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from remixer import settings as settings_mod

EXIT_USAGE = 2


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


def _parse_assignment(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes SECTION.KEY=VALUE, not {text!r}")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML settings file with sections server, policy, telemetry, shipping, controller. "
        "Priority: defaults < this file < REMIXER_* environment variables < command-line flags.",
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        type=_parse_assignment,
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override any setting, e.g. --set policy.default_decision=deny (repeatable; VALUE is YAML).",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remixer",
        description="Telemetry and policy for Envoy-based service meshes: an ext_authz policy server, an "
        "access-log sink exporting Istio-standard metrics and Kafka records, and a controller that scopes "
        "Istio Sidecars to what each workload really calls.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the ext_authz and access-log gRPC server, the HTTP ext_authz endpoint and the admin API",
        description="Serve Envoy's ext_authz Check (gRPC and HTTP), the gRPC access-log service, gRPC health "
        "and reflection, and the admin API with /metrics, /healthz and /readyz. SIGTERM drains and exits 0.",
    )
    _common(serve)
    serve.add_argument(
        "--grpc-address", metavar="HOST:PORT", help="gRPC listen address (server.grpc_address)."
    )
    serve.add_argument(
        "--http-authz-address",
        metavar="HOST:PORT",
        help="HTTP ext_authz listen address (policy.http_address).",
    )
    serve.add_argument(
        "--admin-address", metavar="HOST:PORT", help="admin API address (server.admin_address)."
    )
    serve.add_argument(
        "--parts",
        metavar="LIST",
        help="comma-separated parts to run: policy,telemetry,admin,adaptive (server.parts).",
    )
    serve.add_argument(
        "--workers", type=int, metavar="N", help="worker processes sharing the ports (server.workers)."
    )
    serve.add_argument("--data-dir", type=Path, metavar="DIR", help="data directory (server.data_dir).")
    serve.add_argument(
        "--policy-file",
        dest="policy_files",
        action="append",
        type=Path,
        metavar="FILE",
        help="policy YAML to load at start (GitOps; repeatable; policy.policy_files).",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="server.log_level.")
    serve.add_argument("--log-format", choices=["text", "json"], help="server.log_format.")

    controller = commands.add_parser(
        "controller",
        help="compute Istio Sidecar scopes from Prometheus call metrics and write them",
        description="Read who-calls-whom from Prometheus (and the call-edge table), build the dependency "
        "graph and write one Sidecar per workload to Kubernetes, a directory or stdout.",
    )
    _common(controller)
    from controller import cli as controller_cli

    controller_cli.add_arguments(controller)

    adaptive = commands.add_parser(
        "adaptive",
        help="adaptive limits: what their controllers decided (status)",
        description="Inspect the adaptive limits of a running remixer.",
    )
    _common(adaptive)
    from remixer import adaptive_cli

    adaptive_cli.add_arguments(adaptive)

    records = commands.add_parser(
        "records",
        help="print the records kept in local files while Kafka is off, one JSON object a line",
        description="Print the access-log and decision records kept in local files (shipping.records_dir, "
        "DATA_DIR/records by default) as JSON lines: *.jsonl as they are, *.binpb (protobuf records) "
        "decoded. PATH: files or directories (their files in time order).",
    )
    _common(records)
    records.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    demo = commands.add_parser(
        "demo",
        help="run a real Envoy, an upstream app and remixer, send traffic, print what happened",
        description="Start a real Envoy (ext_authz gRPC + gRPC access logger pointed at remixer), a tiny "
        "upstream and `remixer serve` with a demo policy; send a burst of requests, some of which the policy "
        "denies; print a summary; clean up.",
    )
    _common(demo)
    demo.add_argument("--requests", type=int, default=60, metavar="N", help="how many requests to send (60).")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="leave everything up after the burst and print curl commands to try; Ctrl-C stops it.",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    flag_paths = {
        "grpc_address": "server.grpc_address",
        "http_authz_address": "policy.http_address",
        "admin_address": "server.admin_address",
        "workers": "server.workers",
        "data_dir": "server.data_dir",
        "log_level": "server.log_level",
        "log_format": "server.log_format",
        "policy_files": "policy.policy_files",
    }
    for attr, dotted in flag_paths.items():
        value = getattr(args, attr, None)
        if value is not None:
            _set_path(out, dotted, value)
    parts = getattr(args, "parts", None)
    if parts is not None:
        _set_path(out, "server.parts", [p.strip() for p in parts.split(",") if p.strip()])
    for key, value in args.assignments:
        _set_path(out, key, value)
    return out


def load_settings(args: argparse.Namespace) -> settings_mod.Settings:
    return settings_mod.load(args.config, _overrides(args))


def print_records(paths: Sequence[Path]) -> int:
    """`remixer records PATH...`: every record as one JSON object a line."""
    from google.protobuf import json_format

    from remixer.kit.shipping.localfiles import SUFFIXES, delimited
    from remixer.v1 import access_record_pb2

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES))
        elif path.exists():
            files.append(path)
        else:
            print(f"remixer: error: {path} does not exist", file=sys.stderr)
            return EXIT_USAGE
    out = sys.stdout
    for file in files:
        data = file.read_bytes()
        if file.suffix == ".jsonl":
            out.write(data.decode(errors="replace"))
            continue
        for message in delimited(data):
            record = access_record_pb2.AccessRecord.FromString(message)
            # The field names JSON records carry (the .proto's), not protobuf's camelCase JSON names.
            out.write(json_format.MessageToJson(record, indent=None, preserving_proto_field_name=True) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except settings_mod.SettingsError as exc:
        print(f"remixer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "serve":
        from remixer.serve import serve

        return serve(settings)
    if args.command == "controller":
        from controller import cli as controller_cli

        return controller_cli.run(args, settings.controller, data_dir=settings.server.data_dir)
    if args.command == "adaptive":
        from remixer import adaptive_cli

        return adaptive_cli.run(args, settings)
    if args.command == "records":
        return print_records(args.paths)
    from remixer.demo import run_demo

    return run_demo(settings, requests=args.requests, keep_running=args.keep_running)


if __name__ == "__main__":
    sys.exit(main())
