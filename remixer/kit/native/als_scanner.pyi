# Types of the compiled scanner (als_scanner.pyx); decoding.CompiledStreamReader (telemetry) is its only user.
from collections.abc import Callable, Sequence
from typing import Any, Protocol

KindCallback = Callable[[tuple[Any, ...]], Any]

class RecordEncoder(Protocol):
    """telemetry.core.records.RecordEncoder: JSON is written here, protobuf through encode."""

    json: bool
    max_field: int
    def encode(self, head: bytes, protocol: str, entry: dict[str, Any]) -> bytes: ...

class Scanner:
    def __init__(
        self,
        *,
        memo: dict[tuple[Any, ...], Any],
        http_kind: KindCallback,
        records: RecordEncoder | None,
        path_label: Callable[[str], str] | None,
        methods: Sequence[str],
        buckets: Sequence[float],
        http_counted: frozenset[int],
        malformed: type[Exception],
    ) -> None: ...
    # ("tcp", None, None, None) for TCP logs: validated only, the Python reader books them.
    def scan(
        self, data: bytes
    ) -> tuple[str, int | None, dict[Any, int] | None, list[tuple[bytes | None, bytes]] | None]: ...

def validate(data: bytes) -> str | None: ...
def format_float(x: float) -> bytes: ...
