"""`remixer serve` with the adaptive part, and `remixer adaptive status` against it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.realparts.remixer import RemixerFactory

RULE = {
    "name": "checkout",
    "target": {"service": "checkout.shop.svc.cluster.local"},
    "signals": [{"signal": "p99_latency_ms", "setpoint": 250}],
    "min_rate": 10,
    "max_rate": 500,
    "interval": 0.2,
    "callers": [{"caller": "spiffe://cluster.local/ns/shop/sa/web", "priority": 0, "share": 0.5}],
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remixer", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_serve_runs_the_controller_and_the_cli_prints_its_state(
    remixer_factory: RemixerFactory, tmp_path: Path
) -> None:
    policy = tmp_path / "adaptive.yaml"
    policy.write_text(yaml.safe_dump({"adaptive": [RULE]}))
    server = remixer_factory(
        server={"parts": ["policy", "telemetry", "admin", "adaptive"]},
        policy={"policy_files": [str(policy)]},
    )
    deadline = time.monotonic() + 20
    while True:
        states = httpx.get(server.admin_url + "/v1/adaptive-state", timeout=5).json()
        if states and states[0]["mode"] != "waiting":
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
    # No traffic yet: no fresh signal, so the limit holds at max_rate.
    assert states[0]["mode"] == "hold"
    assert states[0]["limit"] == 500
    metrics = server.metrics()
    assert "remixer_adaptive_leader 1.0" in metrics
    assert 'remixer_adaptive_limit{rule="checkout"} 500.0' in metrics
    status = _cli("adaptive", "status", "--admin-url", server.admin_url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split()[:3] == ["rule", "mode", "limit/s"]
    assert lines[1].split()[:4] == ["checkout", "hold", "500.0", "10..500"]
    assert "spiffe://cluster.local/ns/shop/sa/web=" in lines[1]
    assert server.stop() == 0


def test_the_adaptive_part_needs_the_policy_part() -> None:
    refused = _cli("serve", "--parts", "telemetry,adaptive")
    assert refused.returncode == 2
    assert "part adaptive enforces through part policy" in refused.stderr


def test_status_says_when_no_remixer_answers() -> None:
    down = _cli("adaptive", "status", "--admin-url", "http://127.0.0.1:9")
    assert down.returncode == 1
    assert "unreachable" in down.stderr
