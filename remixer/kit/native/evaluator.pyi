# Types of the compiled evaluator (evaluator.pyx); policy.core.matching.evaluate is its only caller.
from collections.abc import Callable, Mapping

from policy.core.indexing import CompiledRule, StageIndex
from policy.structs import CheckInput, Decision

def configure(*, plain_fields: Mapping[str, str], path_of: Callable[[CheckInput], str]) -> None: ...

class Program:
    def __init__(
        self, deny: StageIndex, rate_limit: StageIndex, allow: StageIndex, default: Decision
    ) -> None: ...
    def run(
        self, req: CheckInput
    ) -> Decision | tuple[Decision, tuple[CompiledRule, ...], list[str] | None]: ...
