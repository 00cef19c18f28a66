"""`remixer adaptive status`: what each adaptive limit's controller last decided, from the admin API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from remixer.settings import Settings

__all__ = ["add_arguments", "format_status", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="adaptive_command", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="print each adaptive limit: mode, limit, signal, P/I/D terms, caller shares, leader",
        description="Ask a running remixer (GET /v1/adaptive-state on its admin API) what each adaptive "
        "limit's controller last decided.",
    )
    status.add_argument(
        "--admin-url", metavar="URL", help="admin API base URL (default: http://<server.admin_address>)."
    )
    status.add_argument("--json", action="store_true", help="print the raw JSON answer.")


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def format_status(rules: list[dict[str, Any]]) -> str:
    if not rules:
        return "no adaptive limits"
    header = ("rule", "mode", "limit/s", "bounds", "signal/setpoint", "p", "i", "d", "callers", "leader")
    rows = [header]
    for r in rules:
        step = r.get("step", {})
        callers = " ".join(f"{k}={v:.1f}" for k, v in sorted(r.get("callers", {}).items()))
        callers = (callers + " " if callers else "") + f"unknown={r.get('unknown', 0):.1f}"
        rows.append(
            (
                r["name"] + (" (dry run)" if r.get("dry_run") else ""),
                r.get("mode", "-"),
                _number(r.get("limit"), ".1f"),
                f"{r.get('min_rate', 0):g}..{r.get('max_rate', 0):g}",
                _number(step.get("measured"), ".2f"),
                _number(step.get("p"), "+.3f"),
                _number(step.get("i"), "+.3f"),
                _number(step.get("d"), "+.3f"),
                callers,
                r.get("leader") or "-",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    base = args.admin_url or f"http://{settings.server.admin_address}"
    try:
        answer = httpx.get(base.rstrip("/") + "/v1/adaptive-state", timeout=5)
    except httpx.HTTPError as exc:
        print(f"remixer: error: admin API at {base} unreachable ({type(exc).__name__})", file=sys.stderr)
        return 1
    if answer.status_code == 404:
        print("remixer: error: that remixer does not run the adaptive part (server.parts)", file=sys.stderr)
        return 1
    if answer.status_code != 200:
        print(f"remixer: error: admin API answered {answer.status_code}", file=sys.stderr)
        return 1
    rules = answer.json()
    print(json.dumps(rules, indent=2) if args.json else format_status(rules))
    return 0
