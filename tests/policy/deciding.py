"""One Check of an input the test built, as the HTTP edge hands one to the service."""

from __future__ import annotations

import time

from policy.core.checks import Checker, DecodedCheck
from policy.structs import CheckInput, Decision


async def decide(checks: Checker, req: CheckInput) -> Decision:
    """The service's decision on `req` (awaited when it asks a shared quota first)."""
    decision = checks.check(DecodedCheck(req, time.perf_counter()))
    return decision if isinstance(decision, Decision) else await decision
