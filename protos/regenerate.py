"""Regenerate what is generated from .proto files: remixer's own Python modules, and the wire readers the
compiled scanners include (remixer/kit/native/wiregen.py: a table of the fields read -> Cython).

Run from anywhere: `python protos/regenerate.py [OUT_DIR]` (default: the repository root), i.e.
grpc_tools.protoc -I protos --python_out=OUT --pyi_out=OUT protos/remixer/v1/*.proto, then
python -m remixer.kit.native.wiregen TABLE OUT for each of WIRE_TABLES, and the record writer
(RECORD_WRITER). tests/telemetry/test_protos.py checks that the committed files are what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# The well-known types (google/protobuf/descriptor.proto: access_record.proto's field options), as grpc_tools
# ships them.
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"
# (table, generated Cython include), relative to the repository root
WIRE_TABLES = [
    ("remixer/kit/native/als_fields.txt", "remixer/kit/native/_als_fields.pxi"),
    ("remixer/kit/native/check_fields.txt", "remixer/kit/native/_check_fields.pxi"),
]
# The compiled scanner's JSON writer of an HTTP entry's own record fields (wiregen.json_writer), from the
# fields telemetry's record encoder takes from access_record.proto.
RECORD_WRITER = "remixer/kit/native/_access_record.pxi"


def record_writer() -> str:
    sys.path.insert(0, str(ROOT))
    from remixer.kit.native import wiregen
    from remixer.v1 import access_record_pb2
    from telemetry.core import records

    fields = records.fields(access_record_pb2.ENTRY, "http")
    return wiregen.json_writer(fields, "HttpEntryRecord", "protos/remixer/v1/access_record.proto")


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def regenerate_protos(out_dir: Path = ROOT) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{PROTOS}", f"-I{WELL_KNOWN}"]
    args = ["protoc", *includes, f"--python_out={out_dir}", f"--pyi_out={out_dir}", *proto_files()]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def regenerate_wire_readers(out_dir: Path = ROOT) -> None:
    sys.path.insert(0, str(ROOT))  # run as a script: remixer is importable from the checkout
    from remixer.kit.native import wiregen

    for table, generated in WIRE_TABLES:
        (out_dir / generated).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / generated).write_text(wiregen.cython(wiregen.load(ROOT / table)))
    (out_dir / RECORD_WRITER).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / RECORD_WRITER).write_text(record_writer())


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    regenerate_protos(out)
    regenerate_wire_readers(out)
