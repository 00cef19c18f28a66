# Types of the compiled evaluator (_evaluator.pyx); matching.evaluate is its only caller.
from policy.core.indexing import CompiledRule, StageIndex
from policy.structs import CheckInput, Decision

class Program:
    def __init__(
        self, deny: StageIndex, rate_limit: StageIndex, allow: StageIndex, default: Decision
    ) -> None: ...
    def run(
        self, req: CheckInput
    ) -> Decision | tuple[Decision, tuple[CompiledRule, ...], list[str] | None]: ...
