"""Protocol-buffer readers for the compiled scanners, generated from a table of the fields they read.

A table is a text file, one line per field read (`#` starts a comment):

    @proto envoy.data.accesslog.v3.accesslog_pb2      # where the table's message names are looked up
    @struct WireFields                                 # the C struct the generated readers fill
    AccessLogCommon.upstream_cluster     text          cluster
    HTTPAccessLogEntry.request           message

`Message.field` names a field of a message of the @proto modules (short names; nested messages by their
own name); its number, wire type, and the type of the message it leads to come from the descriptors,
never from the table. The second column says how the field is read, the third into which struct member:

    message        descend: the field's message type gets its own reader (its lines say what it reads)
    text           a string, UTF-8 checked (as upb checks string fields)          -> Span
    raw            a length-delimited field kept as bytes, unchecked                  -> Span
    uint64         a uint64 varint                                                     -> uint64_t
    int32          an int32 or enum varint (its low 32 bits)                           -> int32_t
    time           a google.protobuf.Duration or Timestamp                             -> Duration
    first(KEY)     of a map<string, ...>, the value of the first entry keyed KEY     -> Span
    last(KEY)      of a map<string, ...>, the value of the last entry keyed KEY (a map's
                   own semantics: a later entry replaces an earlier one); "" when none -> Span
    seen           of a map<string, ...>: whether it has an entry (each entry checked) -> bint
    tag            no reader: only the tag constant, for hand-written code

Output (a Cython include): `T_<Message>_<field>` tag constants, the struct, and one
`scan_<Message>(Span msg, int depth, WireFields* f)` per message with lines. The generated readers use
the helpers of remixer/kit/native/wire.pxd plus these, which the including module defines:
skip_field(cursor, end,
tag, depth), scan_duration(span, depth, Duration*), scan_pair(span, depth, text_value, Span* key,
Span* value), span_is(span, text, length). A known field on the wire with another wire type is skipped
as unknown, as upb does.

    python -m remixer.kit.native.wiregen TABLE OUT     (protos/regenerate.py runs it for every table)
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: _I64,
    FieldDescriptor.TYPE_FIXED64: _I64,
    FieldDescriptor.TYPE_SFIXED64: _I64,
    FieldDescriptor.TYPE_FLOAT: _I32,
    FieldDescriptor.TYPE_FIXED32: _I32,
    FieldDescriptor.TYPE_SFIXED32: _I32,
    FieldDescriptor.TYPE_STRING: _LEN,
    FieldDescriptor.TYPE_BYTES: _LEN,
    FieldDescriptor.TYPE_MESSAGE: _LEN,
}  # the rest (ints, bools, enums) are varints
_TIME_TYPES = ("google.protobuf.Duration", "google.protobuf.Timestamp")
_MEMBER_TYPES = {
    "text": "Span",
    "raw": "Span",
    "uint64": "uint64_t",
    "int32": "int32_t",
    "time": "Duration",
    "first": "Span",
    "last": "Span",
    "seen": "bint",
}
_MAP_READERS = ("first", "last", "seen")
_READER = re.compile(r"(?P<name>[a-z0-9]+)(?:\((?P<argument>[^()]+)\))?$")


class TableError(ValueError):
    """A table line that does not fit the descriptors (the message says which line and why)."""


@dataclass(frozen=True)
class Line:
    message: Descriptor
    field: FieldDescriptor
    reader: str
    argument: str
    into: str

    @property
    def tag_name(self) -> str:
        return f"T_{self.message.name}_{self.field.name}"


def wire_type(field: FieldDescriptor) -> int:
    return _WIRE_TYPES.get(field.type, _VARINT)


def tag(field: FieldDescriptor) -> int:
    return field.number << 3 | wire_type(field)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _message(field: FieldDescriptor) -> Descriptor:
    if field.message_type is None:
        raise TableError(f"{field.full_name} is not a message")
    return field.message_type


def _entry(field: FieldDescriptor, name: str) -> FieldDescriptor:
    """A map field's key or value."""
    return _message(field).fields_by_name[name]


def _check(line: Line) -> None:
    """Refuse a reader the field's declared type cannot feed."""
    field, reader = line.field, line.reader
    repeated = field.is_repeated
    problem = ""
    if reader in _MAP_READERS:
        if not _is_map(field) or _entry(field, "key").type != FieldDescriptor.TYPE_STRING:
            problem = "is not a map with string keys"
        elif wire_type(_entry(field, "value")) != _LEN:
            problem = "maps to varints or fixed-size numbers"
        elif reader == "first" and (_entry(field, "value").type != FieldDescriptor.TYPE_STRING):
            problem = "does not map to strings"
    elif reader == "tag":
        pass
    elif repeated:
        problem = "is repeated"
    elif reader == "message" and field.message_type is None:
        problem = "is not a message"
    elif reader == "text" and field.type != FieldDescriptor.TYPE_STRING:
        problem = "is not a string"
    elif reader == "raw" and wire_type(field) != _LEN:
        problem = "is not length-delimited"
    elif reader == "uint64" and field.type != FieldDescriptor.TYPE_UINT64:
        problem = "is not a uint64"
    elif reader == "int32" and field.type not in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_ENUM):
        problem = "is not an int32 or enum"
    elif reader == "time" and (field.message_type is None or field.message_type.full_name not in _TIME_TYPES):
        problem = "is not a Duration or Timestamp"
    if problem:
        raise TableError(f"{line.message.name}.{field.name} {problem}: it cannot be read as {reader}")
    if (reader in ("first", "last")) != bool(line.argument):
        raise TableError(f"{line.message.name}.{field.name}: only first(KEY) and last(KEY) take an argument")
    if (reader in ("message", "tag")) == bool(line.into):
        raise TableError(f"{line.message.name}.{field.name}: {reader} lines name no struct member, others do")


@dataclass(frozen=True)
class Table:
    source: str  # the table's path, for the generated header
    modules: tuple[str, ...]
    struct: str
    lines: tuple[Line, ...]


def _messages(files: list[FileDescriptor]) -> dict[str, Descriptor]:
    found: dict[str, list[Descriptor]] = {}

    def add(message: Descriptor) -> None:
        found.setdefault(message.name, []).append(message)
        for nested in message.nested_types:
            add(nested)

    for file in files:
        for message in file.message_types_by_name.values():
            add(message)
    return {name: versions[0] for name, versions in found.items() if len(versions) == 1}


def parse(text: str, source: str) -> Table:
    modules: list[str] = []
    struct = "WireFields"
    rows: list[tuple[int, list[str]]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "@proto":
            modules.extend(words[1:])
        elif words[0] == "@struct":
            struct = words[1]
        else:
            rows.append((number, words))
    messages = _messages([importlib.import_module(m).DESCRIPTOR for m in modules])
    lines: list[Line] = []
    for number, words in rows:
        where = f"{source}:{number}"
        if len(words) not in (2, 3) or words[0].count(".") != 1:
            raise TableError(f"{where}: expected `Message.field reader [member]`, got {' '.join(words)!r}")
        message_name, field_name = words[0].split(".")
        match = _READER.match(words[1])
        message = messages.get(message_name)
        if message is None:
            raise TableError(f"{where}: no single message {message_name} in {', '.join(modules)}")
        field = message.fields_by_name.get(field_name)
        if field is None:
            raise TableError(f"{where}: {message.full_name} has no field {field_name}")
        if match is None or match["name"] not in (*_MEMBER_TYPES, "message", "tag"):
            raise TableError(f"{where}: unknown reader {words[1]!r}")
        line = Line(
            message, field, match["name"], match["argument"] or "", words[2] if len(words) > 2 else ""
        )
        try:
            _check(line)
        except TableError as exc:
            raise TableError(f"{where}: {exc}") from None
        lines.append(line)
    return Table(source, tuple(modules), struct, tuple(lines))


def load(path: Path) -> Table:
    return parse(path.read_text(), path.name)


# ---- Cython ---------------------------------------------------------------------------------------


def _members(table: Table) -> dict[str, tuple[str, str]]:
    """Struct member -> (C type, the field it holds)."""
    members: dict[str, tuple[str, str]] = {}
    for line in table.lines:
        if not line.into:
            continue
        kind = _MEMBER_TYPES[line.reader]
        held = f"{line.message.name}.{line.field.name}" + (f"[{line.argument}]" if line.argument else "")
        known = members.get(line.into)
        if known is not None and known[0] != kind:
            raise TableError(f"member {line.into} is both {known[0]} and {kind}")
        members[line.into] = (kind, f"{known[1]}, {held}" if known else held)
    return members


def _found_bits(table: Table) -> dict[str, int]:
    return {line.into: 1 << i for i, line in enumerate(x for x in table.lines if x.reader == "first")}


def _constants(table: Table) -> list[str]:
    out = ["cdef enum:  # tags (field number << 3 | wire type), from the descriptors"]
    seen: set[str] = set()
    for line in table.lines:
        if line.tag_name in seen:
            continue
        seen.add(line.tag_name)
        field = line.field
        out.append(
            f"    {line.tag_name} = {tag(field):#04x}  # field {field.number}, wire type {wire_type(field)}"
        )
    maps = [_message(line.field) for line in table.lines if _is_map(line.field)]
    if maps:  # every map entry is key = 1, value = 2; its wire types say which reader applies
        key, value = maps[0].fields_by_name["key"], maps[0].fields_by_name["value"]
        if any(
            (tag(m.fields_by_name["key"]), tag(m.fields_by_name["value"])) != (tag(key), tag(value))
            for m in maps
        ):
            raise TableError("map entries of different wire types")
        out.append(f"    T_MAP_KEY = {tag(key):#04x}  # map<K, V> entries")
        out.append(f"    T_MAP_VALUE = {tag(value):#04x}")
    times = {
        _message(line.field).full_name: _message(line.field) for line in table.lines if line.reader == "time"
    }
    for full_name, message in sorted(times.items()):
        seconds, nanos = message.fields_by_name["seconds"], message.fields_by_name["nanos"]
        if (seconds.number, seconds.type, nanos.number, nanos.type) != (
            1,
            FieldDescriptor.TYPE_INT64,
            2,
            FieldDescriptor.TYPE_INT32,
        ):
            raise TableError(f"{full_name} is not (int64 seconds = 1, int32 nanos = 2)")
    if times:
        out.append(f"    T_TIME_SECONDS = {1 << 3 | _VARINT:#04x}  # Duration / Timestamp")
        out.append(f"    T_TIME_NANOS = {2 << 3 | _VARINT:#04x}")
    bits = _found_bits(table)
    if bits:
        out.append("")
        out.append(
            "cdef enum:  # found-bits of the first(KEY) members: a later entry with the key is ignored"
        )
        out.extend(f"    FOUND_{name} = {bit}" for name, bit in bits.items())
    return out


def _struct(table: Table) -> list[str]:
    if not _members(table):  # a table of tags only
        return []
    out = ["", f"cdef struct {table.struct}:"]
    for name, (kind, held) in _members(table).items():
        out.append(f"    {kind} {name}  # {held}")
    if _found_bits(table):
        out.append("    uint32_t found  # FOUND_* bits")
    return out


def _branch(line: Line, lines: list[Line]) -> list[str]:
    """The body that reads one field (all lines of that field, for map fields read into several members)."""
    into = f"f.{line.into}"
    if line.reader == "message":
        return [
            "err = read_span(&p, end, &span)",
            "if not err:",
            f"    err = scan_{_message(line.field).name}(span, depth - 1, f)",
        ]
    if line.reader == "text":
        return [f"err = read_text(&p, end, &{into})"]
    if line.reader == "raw":
        return [f"err = read_span(&p, end, &{into})"]
    if line.reader == "uint64":
        return [f"err = read_varint(&p, end, &{into})"]
    if line.reader == "int32":
        return [
            "err = read_varint(&p, end, &number)",
            f"{into} = <int32_t><uint32_t>number  # the low 32 bits",
        ]
    if line.reader == "time":
        return [
            "err = read_span(&p, end, &span)",
            "if not err:",
            f"    err = scan_duration(span, depth - 1, &{into})",
        ]
    # map lines: check the entry, then each reader of this field in table order
    text_value = _entry(line.field, "value").type == FieldDescriptor.TYPE_STRING
    out = [
        "err = read_span(&p, end, &span)",
        "if not err:",
        f"    err = scan_pair(span, depth - 1, {text_value}, &key, &value)",
    ]
    keyed = [x for x in lines if x.reader in ("first", "last")]
    out.extend(f"if not err:\n    f.{x.into} = True" for x in lines if x.reader == "seen")
    for i, x in enumerate(keyed):
        key = x.argument.encode()
        first = x.reader == "first"
        out.append(
            ("if" if i == 0 else "elif")
            + " not err"
            + (f" and not f.found & FOUND_{x.into}" if first else "")
            + f" and span_is(key, {key!r}, {len(key)}):"
        )
        if first:
            out.append(f"    f.found |= FOUND_{x.into}")
        out.append(f"    f.{x.into} = value")
    return out


def _reader(table: Table, message: Descriptor) -> list[str]:
    mine = [line for line in table.lines if line.message is message and line.reader != "tag"]
    fields: dict[int, list[Line]] = {}
    for line in mine:
        fields.setdefault(line.field.number, []).append(line)
    for lines in fields.values():
        if len(lines) > 1 and not all(x.reader in _MAP_READERS for x in lines):
            raise TableError(f"{message.name}.{lines[0].field.name}: read twice (only map readers combine)")
    readers = {line.reader for line in mine}
    out = [
        f"cdef int scan_{message.name}(Span msg, int depth, {table.struct}* f) noexcept:",
        f'    """{message.full_name}"""',
        "    cdef const uint8_t* p = msg.ptr",
        "    cdef const uint8_t* end = msg.ptr + msg.len",
        "    cdef uint32_t tag",
    ]
    if "int32" in readers:
        out.append("    cdef uint64_t number = 0")
    if readers & {"message", "time", *_MAP_READERS}:
        out.append("    cdef Span span")
    if readers & set(_MAP_READERS):
        out += ["    cdef Span key", "    cdef Span value"]
    out += [
        "    cdef int err",
        "    if depth < 0:",
        "        return E_DEPTH",
        "    while p < end:",
        "        err = read_tag(&p, end, &tag)",
        "        if err:",
        "            return err",
    ]
    for i, lines in enumerate(fields.values()):
        out.append(f"        {'if' if i == 0 else 'elif'} tag == {lines[0].tag_name}:")
        body = "\n".join(_branch(lines[0], lines)).splitlines()
        out.extend(f"            {x}" for x in body)
    out += [
        "        else:",
        "            err = skip_field(&p, end, tag, depth)",
        "        if err:",
        "            return err",
        "    return OK",
    ]
    return out


def cython(table: Table) -> str:
    readers: list[Descriptor] = []
    for line in table.lines:
        if line.reader != "tag" and line.message not in readers:
            readers.append(line.message)
    for line in table.lines:
        if line.reader == "message" and line.field.message_type not in readers:
            raise TableError(
                f"{line.message.name}.{line.field.name}: no line reads {_message(line.field).name}"
            )
    header = [
        f"# Generated by remixer/kit/native/wiregen.py from {table.source} and the descriptors of",
        f"# {', '.join(table.modules)}.",
        "# Do not edit: change the table, then run `make protos` (tests check this file is fresh).",
        "",
    ]
    parts = [header, _constants(table), _struct(table)]
    for message in readers:
        parts += [["", ""], _reader(table, message)]
    return "\n".join(line for part in parts for line in part) + "\n"


def main(argv: list[str]) -> None:
    table, out = Path(argv[0]), Path(argv[1])
    out.write_text(cython(load(table)))


if __name__ == "__main__":
    main(sys.argv[1:])
