"""`remixer demo` end to end, as a new user runs it."""

from __future__ import annotations

import re
import subprocess
import sys


def _running(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def test_demo_shows_allowed_denied_and_received_entries() -> None:
    before = set(_running("remixer-demo-"))
    result = subprocess.run(
        [sys.executable, "-m", "remixer", "demo", "--requests", "30"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    def figure(label: str) -> int:
        match = re.search(rf"{re.escape(label)}\s+(\d+)", out)
        assert match, f"{label!r} missing from:\n{out}"
        return int(match.group(1))

    assert figure("requests sent") == 30
    assert figure("allowed") > 0
    assert figure("denied (403)") > 0
    assert figure("allowed") + figure("denied (403)") + figure("rate-limited (429)") + figure("other") == 30
    assert figure("access-log entries recv") >= 30
    assert "istio_requests_total{" in out
    # Every process the demo started is gone.
    assert set(_running("remixer-demo-")) <= before
