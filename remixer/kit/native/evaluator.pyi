# Types of the compiled evaluator (evaluator.pyx). It runs policy's compiled rule indexes on policy's
# CheckInput, but the kit names no card: those are Any here, and policy.core.rules holds what it builds.
from collections.abc import Callable, Mapping
from typing import Any

def configure(*, plain_fields: Mapping[str, str], path_of: Callable[[Any], str]) -> None: ...

class Program:
    def __init__(self, deny: Any, rate_limit: Any, allow: Any, default: Any) -> None: ...
    def run(self, req: Any) -> Any: ...
