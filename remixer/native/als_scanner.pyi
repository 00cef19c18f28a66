# Types of the compiled scanner (als_scanner.pyx); decoding.CompiledStreamReader (telemetry) is its only user.
from collections.abc import Callable, Sequence
from typing import Any

KindCallback = Callable[[tuple[Any, ...], Sequence[tuple[str, bytes]]], Any]

class Scanner:
    def __init__(
        self,
        *,
        memo: dict[tuple[Any, ...], Any],
        http_kind: KindCallback,
        tcp_kind: KindCallback,
        encode: Callable[[Any, dict[str, Any]], bytes] | None,
        json_records: bool,
        max_field: int,
        path_label: Callable[[str], str] | None,
        peer_in_response_default: bool,
        methods: Sequence[str],
        buckets: Sequence[float],
        http_counted: frozenset[int],
        tcp_counted: frozenset[int],
        malformed: type[Exception],
    ) -> None: ...
    def scan(self, data: bytes) -> tuple[str, int, dict[Any, int], list[tuple[bytes | None, bytes]]]: ...

def validate(data: bytes) -> str | None: ...
def format_float(x: float) -> bytes: ...
