"""Rewrite the generated deploy/ files: `python -m tests.deploy.regenerate`.

- deploy/kubernetes/components/monitoring/prometheusrule.yaml from deploy/prometheus/remixer-alerts.rules.yaml
- deploy/grafana/dashboards/*.json from deploy/grafana/dashboards.py
The tests fail while either is stale.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import yaml

from .paths import DEPLOY

RULES = DEPLOY / "prometheus/remixer-alerts.rules.yaml"
PROMETHEUS_RULE = DEPLOY / "kubernetes/components/monitoring/prometheusrule.yaml"
PROMETHEUS_RULE_HEADER = (
    "# Generated from deploy/prometheus/remixer-alerts.rules.yaml by `python -m tests.deploy.regenerate`;\n"
    "# tests/deploy/test_alerts.py keeps the two equal.\n"
)


def prometheus_rule_from(rule_file: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule the Prometheus Operator needs for the same groups."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "remixer-alerts", "labels": {"app.kubernetes.io/name": "remixer"}},
        "spec": {"groups": rule_file["groups"]},
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line PromQL as `|` blocks, so the generated file reads like the source."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_BlockDumper.add_representer(str, _str)


def prometheus_rule_text() -> str:
    doc = prometheus_rule_from(yaml.safe_load(RULES.read_text()))
    return PROMETHEUS_RULE_HEADER + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=200)


def dashboards_module() -> ModuleType:
    path = DEPLOY / "grafana/dashboards.py"
    spec = importlib.util.spec_from_file_location("remixer_deploy_dashboards", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main() -> int:
    PROMETHEUS_RULE.write_text(prometheus_rule_text())
    print(f"wrote {PROMETHEUS_RULE}")
    return int(dashboards_module().main())


if __name__ == "__main__":
    sys.exit(main())
