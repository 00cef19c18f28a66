# Types of the compiled CheckRequest key reader (check_keys.pyx); policy/edge/grpc_authz.py is its only user.
from collections.abc import Iterable

class KeyReader:
    usable: bool
    def __init__(self, attributes: Iterable[str], *, jwt_header: str) -> None: ...
    def key(self, data: bytes) -> bytes | None: ...

def read_input(
    data: bytes,
) -> (
    tuple[
        str,
        str,
        str,
        str,
        str,
        dict[str, str],
        str,
        str,
        str,
        dict[str, str],
        str,
        int,
        str,
        dict[str, str],
        dict[str, str],
    ]
    | None
): ...
def log_fields(data: bytes) -> tuple[str, str, str, str | None, str, str, str, int, str, str] | None: ...
