"""Regenerate what is generated from .proto files: remixer's own Python modules, and the wire readers the
compiled scanners include (remixer/kit/native/wiregen.py: a table of the fields read -> Cython).

Run from anywhere: `python protos/regenerate.py [OUT_DIR]` (default: the repository root), i.e.
grpc_tools.protoc -I protos --python_out=OUT --pyi_out=OUT protos/remixer/v1/*.proto, then
python -m remixer.kit.native.wiregen TABLE OUT for each of WIRE_TABLES. tests/telemetry/test_protos.py checks
that the committed files are what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# (table, generated Cython include), relative to the repository root
WIRE_TABLES = [
    ("remixer/kit/native/als_fields.txt", "remixer/kit/native/_als_fields.pxi"),
    ("remixer/kit/native/check_fields.txt", "remixer/kit/native/_check_fields.pxi"),
]


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def regenerate_protos(out_dir: Path = ROOT) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTOS}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *proto_files()]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def regenerate_wire_readers(out_dir: Path = ROOT) -> None:
    sys.path.insert(0, str(ROOT))  # run as a script: remixer is importable from the checkout
    from remixer.kit.native import wiregen

    for table, generated in WIRE_TABLES:
        (out_dir / generated).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / generated).write_text(wiregen.cython(wiregen.load(ROOT / table)))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    regenerate_protos(out)
    regenerate_wire_readers(out)
