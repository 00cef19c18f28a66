"""Regenerate the Python modules for remixer's own .proto files.

Run from anywhere: `python protos/regenerate.py [OUT_DIR]` (default: the repository root), i.e.
grpc_tools.protoc -I protos --python_out=OUT --pyi_out=OUT protos/remixer/v1/*.proto
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def regenerate(out_dir: Path = ROOT) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTOS}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *proto_files()]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    regenerate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
