"""Alert rules: promtool accepts them, promtool unit tests show each alert firing and staying quiet, and the
PrometheusRule is the very same rule file."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from .paths import DEPLOY, load_yaml_docs
from .regenerate import PROMETHEUS_RULE, RULES, prometheus_rule_from, prometheus_rule_text

RULE_TESTS = DEPLOY / "prometheus/remixer-alerts.test.yaml"

REQUIRED_ALERTS = {
    "RemixerService5xxRatioHigh",
    "RemixerService404Surge",
    "RemixerAccessLogsDropped",
    "RemixerSpoolFilling",
    "RemixerKafkaErrors",
    "RemixerPolicyStoreStale",
    "RemixerControllerRunFailed",
    "RemixerControllerRefusedByGuard",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: apt-get install -y prometheus"
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False, timeout=120)


def test_promtool_accepts_the_rule_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    defined = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    assert defined >= REQUIRED_ALERTS
    assert fired == defined, f"never shown firing: {defined - fired}"
    assert quiet == defined, f"never shown quiet: {defined - quiet}"


def test_prometheus_rule_holds_exactly_the_rule_file() -> None:
    expected = prometheus_rule_from(yaml.safe_load(RULES.read_text()))
    (actual,) = load_yaml_docs(PROMETHEUS_RULE)
    assert actual == expected, "prometheusrule.yaml is stale: python -m tests.deploy.regenerate"
    assert PROMETHEUS_RULE.read_text() == prometheus_rule_text()
