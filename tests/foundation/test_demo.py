"""`remixer demo` end to end, as a new user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

DEMO_MARK = "REMIXER_DEMO_TEST_RUN"


def _marked(mark: str) -> list[int]:
    """Live processes whose environment carries DEMO_MARK=mark: the demo and everything it started
    (children inherit the environment), whatever else runs on the machine."""
    needle = f"{DEMO_MARK}={mark}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def test_demo_shows_allowed_denied_and_received_entries() -> None:
    mark = uuid.uuid4().hex
    result = subprocess.run(
        [sys.executable, "-m", "remixer", "demo", "--requests", "30"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, DEMO_MARK: mark},
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
    # Every process this demo started is gone (processes of other runs on the machine are not looked at).
    assert _marked(mark) == []


def test_marked_finds_only_the_marked_processes() -> None:
    mark = uuid.uuid4().hex
    with subprocess.Popen(["sleep", "30"], env={**os.environ, DEMO_MARK: mark}) as child:
        other = subprocess.Popen(["sleep", "30"], env={**os.environ, DEMO_MARK: "another-run"})
        try:
            assert _marked(mark) == [child.pid]
        finally:
            child.kill()
            other.kill()
            other.wait()
    assert _marked(mark) == []
