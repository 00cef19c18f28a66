"""Running the controller in tests: through its real composition (Prometheus, SQLite, sinks) or its CLI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from controller import cli
from controller.app import compose
from controller.settings import ControllerSettings
from controller.structs import RunSummary


async def run_at(
    settings: ControllerSettings,
    *,
    sink: str,
    data_dir: Path,
    now: float,
    dry_run: bool = False,
    force: bool = False,
    namespaces: list[str] | None = None,
) -> RunSummary:
    composition = await compose(settings, sink_spec=sink, data_dir=data_dir, namespaces=namespaces)
    try:
        return await composition.reconciler.run_once(now=now, dry_run=dry_run, force=force)
    finally:
        await composition.close()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="remixer controller")
    cli.add_arguments(root)
    return root


def run_cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], settings: ControllerSettings | None = None, **kw: Any
) -> tuple[int, str, str]:
    args = parser().parse_args(argv)
    code = cli.run(args, settings or ControllerSettings(), **kw)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
