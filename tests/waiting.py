"""Wait on a condition, never a fixed time: the CI machine is shared and sometimes slow, so a sleep long
enough there is a waste everywhere else, and one short enough here fails there.

`eventually` (async) and `wait_until` (blocking) poll `check` until it holds and fail with what was
awaited and for how long when it does not hold within `within` seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL_S = 0.05


async def eventually(check: Callable[[], object], *, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} not met within {within}s"
        await asyncio.sleep(POLL_S)


def wait_until(check: Callable[[], object], *, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} not met within {within}s"
        time.sleep(POLL_S)
