"""Debian's headless Chromium as a real browser for pages remixer serves: the DOM after the page's
scripts ran (a virtual-time budget, no fixed sleep)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def dump_dom(url: str, profile: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is required (apt-get install -y chromium)"
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            *flags,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
