"""Protocol-buffer readers for the compiled scanners, generated from a table of the fields they read.

A table is a text file, one line per field read (`#` starts a comment):

    @proto envoy.data.accesslog.v3.accesslog_pb2      # where the table's message names are looked up
    @struct WireFields                                 # the C struct the generated readers fill
    @unknown skip                                      # or refuse: what a field the table does not list does
    AccessLogCommon.upstream_cluster     text          cluster
    HTTPAccessLogEntry.request           message

`Message.field` names a field of a message of the @proto modules (short names; nested messages by their
own name); its number, wire type, and the type of the message it leads to come from the descriptors,
never from the table. The second column says how the field is read, the third into which struct member:

    message        descend: the field's message type gets its own reader (its lines say what it reads);
                   a third column is a prefix for the members filled below it, which then get readers
                   of their own (one message read in two places, into two sets of members)
    text           a string, UTF-8 checked (as upb checks string fields)          -> Span
    raw            the field as it is on the wire, unchecked: a length-delimited field's content or a
                   varint's bytes                                                      -> Span
    uint64         a uint64 varint                                                     -> uint64_t
    int32          an int32 or enum varint (its low 32 bits)                           -> int32_t
    time           a google.protobuf.Duration or Timestamp, through scan_time, generated from their
                   descriptors (one wire shape; no lines of their own)                -> Duration
    first(KEY)     of a map<string, ...>, the value of the first entry keyed KEY     -> Span
    last(KEY)      of a map<string, ...>, the value of the last entry keyed KEY (a map's
                   own semantics: a later entry replaces an earlier one); "" when none -> Span
    seen           of a map<string, ...>: whether it has an entry (each entry checked) -> bint
    entries        of a map<string, ...>: each entry handed to on_entry(f, MAP_<member>, key, value)
                   in wire order (the third column names the map, not a member)
    empty          a message field accepted only when empty (a filled one is refused)
    tag            no reader: only the tag constant, for hand-written code

Unknown fields (and a listed field with another wire type, which upb treats as unknown): `@unknown
skip` (the default) skips them, as upb does; `@unknown refuse` refuses the message (E_UNKNOWN), for a
reader that must not answer for what it has not read. In a refusing table a line may leave out the
member: the field is read and checked (text: UTF-8) and its value dropped.

Output (a Cython include): `T_<Message>_<field>` tag constants, the `MAP_*` map numbers, the struct, one
`scan_<prefix><Message>(Span msg, int depth, WireFields* f)` per message (and prefix) with lines,
`scan_pair`, the map entries' reader, and for time lines the `Duration` struct (seconds, nanos) with
`scan_time(Span msg, int depth, Duration* out)`. The generated readers use the
helpers of remixer/kit/native/wire.pxd plus these, which the including module defines:
skip_field(cursor, end, tag, depth) (skipping tables), span_is(span, text, length) (first, last),
on_entry(f, map, key, value) (entries).

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
_MAP_READERS = ("first", "last", "seen", "entries")
_DROPPABLE = ("text", "raw", "uint64", "int32")  # may name no member in a refusing table
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


def _check(line: Line, refuse: bool) -> None:
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
    elif reader in ("message", "empty") and field.message_type is None:
        problem = "is not a message"
    elif reader == "text" and field.type != FieldDescriptor.TYPE_STRING:
        problem = "is not a string"
    elif reader == "raw" and wire_type(field) not in (_LEN, _VARINT):
        problem = "is neither length-delimited nor a varint"
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
    if reader in ("tag", "empty") and line.into:
        raise TableError(f"{line.message.name}.{field.name}: {reader} lines name no struct member")
    if not line.into and reader not in ("message", "tag", "empty") and not (refuse and reader in _DROPPABLE):
        dropping = " (here only text, raw, uint64 and int32 lines may drop the value)" if refuse else ""
        raise TableError(f"{line.message.name}.{field.name}: {reader} lines name a struct member{dropping}")


@dataclass(frozen=True)
class Table:
    source: str  # the table's path, for the generated header
    modules: tuple[str, ...]
    struct: str
    refuse: bool  # @unknown refuse: a field not listed refuses the message
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
    unknown = "skip"
    rows: list[tuple[int, list[str]]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "@proto":
            modules.extend(words[1:])
        elif words[0] == "@struct":
            struct = words[1]
        elif words[0] == "@unknown":
            if words[1:] not in (["skip"], ["refuse"]):
                raise TableError(f"{source}:{number}: @unknown takes skip or refuse")
            unknown = words[1]
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
        if match is None or match["name"] not in (*_MEMBER_TYPES, "entries", "empty", "message", "tag"):
            raise TableError(f"{where}: unknown reader {words[1]!r}")
        line = Line(
            message, field, match["name"], match["argument"] or "", words[2] if len(words) > 2 else ""
        )
        try:
            _check(line, unknown == "refuse")
        except TableError as exc:
            raise TableError(f"{where}: {exc}") from None
        lines.append(line)
    return Table(source, tuple(modules), struct, unknown == "refuse", tuple(lines))


def load(path: Path) -> Table:
    return parse(path.read_text(), path.name)


# ---- Cython ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """One generated scan_ function: a message's lines, filling the members under one prefix."""

    message: Descriptor
    prefix: str
    lines: tuple[Line, ...]

    @property
    def name(self) -> str:
        return f"scan_{self.prefix}{self.message.name}"


def _readers(table: Table) -> list[Reader]:
    """A reader per message with lines and per prefix it is reached under, in the table's order."""
    reading = [line for line in table.lines if line.reader != "tag"]
    messages = list(dict.fromkeys(line.message for line in reading))
    for line in reading:
        if line.reader == "message" and line.field.message_type not in messages:
            where = f"{line.message.name}.{line.field.name}"
            raise TableError(f"{where}: no line reads {_message(line.field).name}")
    prefixes: dict[Descriptor, list[str]] = {message: [] for message in messages}

    def reach(message: Descriptor, prefix: str, path: tuple[Descriptor, ...]) -> None:
        if prefix in prefixes[message]:
            return
        prefixes[message].append(prefix)
        for line in reading:
            if line.message is message and line.reader == "message":
                if line.into and _message(line.field) in (*path, message):
                    raise TableError(f"{message.name}.{line.field.name}: a prefix inside a recursion")
                reach(_message(line.field), prefix + line.into, (*path, message))

    targets = {line.field.message_type for line in reading if line.reader == "message"}
    roots = [message for message in messages if message not in targets]
    for message in roots + messages:  # then what only a recursion reaches
        if message in roots or not prefixes[message]:
            reach(message, "", ())
    return [
        Reader(message, prefix, tuple(line for line in reading if line.message is message))
        for message in messages
        for prefix in prefixes[message]
    ]


def _members(readers: list[Reader]) -> dict[str, tuple[str, str]]:
    """Struct member -> (C type, the field it holds)."""
    members: dict[str, tuple[str, str]] = {}
    for reader in readers:
        for line in reader.lines:
            if not line.into or line.reader in ("message", "entries"):
                continue
            name, kind = reader.prefix + line.into, _MEMBER_TYPES[line.reader]
            held = f"{line.message.name}.{line.field.name}" + (f"[{line.argument}]" if line.argument else "")
            known = members.get(name)
            if known is not None and known[0] != kind:
                raise TableError(f"member {name} is both {known[0]} and {kind}")
            members[name] = (kind, f"{known[1]}, {held}" if known else held)
    return members


def _named(readers: list[Reader], reader: str) -> list[str]:
    """The members (or maps) the lines of one reader kind fill, in order, each once."""
    named = (r.prefix + line.into for r in readers for line in r.lines if line.reader == reader)
    return list(dict.fromkeys(named))


def _constants(table: Table, readers: list[Reader]) -> list[str]:
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
    times = _times(table)
    if times:
        held = ", ".join(message.full_name for message in times)
        out.extend(f"    T_TIME_{field.name} = {tag(field):#04x}  # {held}" for field in times[0].fields)
    firsts = _named(readers, "first")
    if firsts:
        out.append("")
        out.append(
            "cdef enum:  # found-bits of the first(KEY) members: a later entry with the key is ignored"
        )
        out.extend(f"    FOUND_{name} = {1 << i}" for i, name in enumerate(firsts))
    entries = _named(readers, "entries")
    if entries:
        out.append("")
        out.append("cdef enum:  # the maps whose entries go to on_entry(f, MAP_*, key, value)")
        out.extend(f"    MAP_{name} = {i}" for i, name in enumerate(entries))
        out.append(f"    N_MAPS = {len(entries)}")
    return out


# How a time field's members are read (its varint, then this cast): the C type of each.
_TIME_MEMBERS = {
    FieldDescriptor.TYPE_INT64: ("int64_t", "<int64_t>number"),
    FieldDescriptor.TYPE_INT32: ("int32_t", "<int32_t><uint32_t>number  # the low 32 bits"),
}


def _times(table: Table) -> list[Descriptor]:
    """The time types (Duration, Timestamp) the table's time lines read, by name. One reader fills the
    one Duration struct for all of them, so each must have its fields (int64 seconds, int32 nanos) under
    the same tags, and none may also have lines of its own (it would be read two ways)."""
    times = {_message(x.field).full_name: _message(x.field) for x in table.lines if x.reader == "time"}
    tags = {tuple(tag(field) for field in message.fields) for message in times.values()}
    for message in times.values():
        shape = [(field.name, field.type) for field in message.fields]
        if shape != [("seconds", FieldDescriptor.TYPE_INT64), ("nanos", FieldDescriptor.TYPE_INT32)]:
            raise TableError(f"{message.full_name} is not (int64 seconds, int32 nanos)")
        if any(line.message is message for line in table.lines):
            raise TableError(f"{message.name} is read by time lines: it takes no lines of its own")
    if len(tags) > 1:
        raise TableError(f"{', '.join(sorted(times))}: not one wire shape, so not one reader")
    return [times[name] for name in sorted(times)]


def _time_struct(table: Table) -> list[str]:
    times = _times(table)
    if not times:
        return []
    held = " / ".join(message.full_name for message in times)
    out = ["", f"cdef struct Duration:  # {held}"]
    out.extend(f"    {_TIME_MEMBERS[field.type][0]} {field.name}" for field in times[0].fields)
    return out


def _time_reader(table: Table, times: list[Descriptor]) -> list[str]:
    branches: list[str] = []
    for i, field in enumerate(times[0].fields):
        branches.append(f"        {'if' if i == 0 else 'elif'} tag == T_TIME_{field.name}:")
        branches.append("            err = read_varint(&p, end, &number)")
        branches.append(f"            out.{field.name} = {_TIME_MEMBERS[field.type][1]}")
    doc = " / ".join(message.full_name for message in times)
    head = "scan_time(Span msg, int depth, Duration* out)"
    return _function(table, head, doc, ["    cdef uint64_t number = 0", *_DEPTH], branches)


def _struct(table: Table, readers: list[Reader]) -> list[str]:
    members = _members(readers)
    if not members:  # a table of tags only
        return []
    out = ["", f"cdef struct {table.struct}:"]
    for name, (kind, held) in members.items():
        out.append(f"    {kind} {name}  # {held}")
    if _named(readers, "first"):
        out.append("    uint32_t found  # FOUND_* bits")
    return out


def _branch(line: Line, lines: list[Line], prefix: str) -> list[str]:
    """The body that reads one field (all lines of that field, for map fields read into several members)."""
    into = f"f.{prefix}{line.into}"
    if line.reader == "message":
        return [
            "err = read_span(&p, end, &span)",
            "if not err:",
            f"    err = scan_{prefix}{line.into}{_message(line.field).name}(span, depth - 1, f)",
        ]
    if line.reader == "empty":
        return ["err = read_span(&p, end, &span)", "if not err and span.len:", "    err = E_UNKNOWN"]
    if line.reader in ("text", "raw") and wire_type(line.field) == _LEN:
        read = "read_text" if line.reader == "text" else "read_span"
        return [f"err = {read}(&p, end, &{into if line.into else 'span'})"]
    if line.reader in _DROPPABLE and not line.into:  # a varint, checked and dropped
        return ["err = read_varint(&p, end, &number)"]
    if line.reader == "raw":  # a varint's own bytes
        return [
            "start = p",
            "err = read_varint(&p, end, &number)",
            f"{into}.ptr = start",
            f"{into}.len = p - start",
        ]
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
            f"    err = scan_time(span, depth - 1, &{into})",
        ]
    # map lines: check the entry, then each reader of this field in table order
    text_value = _entry(line.field, "value").type == FieldDescriptor.TYPE_STRING
    out = [
        "err = read_span(&p, end, &span)",
        "if not err:",
        f"    err = scan_pair(span, depth - 1, {text_value}, &key, &value)",
    ]
    keyed = [x for x in lines if x.reader in ("first", "last")]
    out.extend(f"if not err:\n    f.{prefix}{x.into} = True" for x in lines if x.reader == "seen")
    out.extend(
        f"if not err:\n    err = on_entry(f, MAP_{prefix}{x.into}, key, value)"
        for x in lines
        if x.reader == "entries"
    )
    for i, x in enumerate(keyed):
        key = x.argument.encode()
        first = x.reader == "first"
        out.append(
            ("if" if i == 0 else "elif")
            + " not err"
            + (f" and not f.found & FOUND_{prefix}{x.into}" if first else "")
            + f" and span_is(key, {key!r}, {len(key)}):"
        )
        if first:
            out.append(f"    f.found |= FOUND_{prefix}{x.into}")
        out.append(f"    f.{prefix}{x.into} = value")
    return out


# The locals a reader declares, when its branches use them.
_LOCALS = (
    ("number", "cdef uint64_t number = 0"),
    ("start", "cdef const uint8_t* start"),
    ("span", "cdef Span span"),
    ("key", "cdef Span key"),
    ("value", "cdef Span value"),
)


def _function(table: Table, head: str, doc: str, setup: list[str], branches: list[str]) -> list[str]:
    """A reader: the loop over a message's fields, `branches` (an if/elif chain) reading the known ones."""
    unknown = "err = E_UNKNOWN" if table.refuse else "err = skip_field(&p, end, tag, depth)"
    return [
        f"cdef int {head} noexcept:",
        f'    """{doc}"""',
        "    cdef const uint8_t* p = msg.ptr",
        "    cdef const uint8_t* end = msg.ptr + msg.len",
        "    cdef uint32_t tag",
        *setup,
        "    while p < end:",
        "        err = read_tag(&p, end, &tag)",
        "        if err:",
        "            return err",
        *branches,
        "        else:",
        f"            {unknown}",
        "        if err:",
        "            return err",
        "    return OK",
    ]


_DEPTH = ["    cdef int err", "    if depth < 0:", "        return E_DEPTH"]


def _reader(table: Table, reader: Reader) -> list[str]:
    fields: dict[int, list[Line]] = {}
    for line in reader.lines:
        fields.setdefault(line.field.number, []).append(line)
    branches: list[str] = []
    for i, lines in enumerate(fields.values()):
        if len(lines) > 1 and not all(x.reader in _MAP_READERS for x in lines):
            where = f"{reader.message.name}.{lines[0].field.name}"
            raise TableError(f"{where}: read twice (only map readers combine)")
        branches.append(f"        {'if' if i == 0 else 'elif'} tag == {lines[0].tag_name}:")
        body = "\n".join(_branch(lines[0], lines, reader.prefix)).splitlines()
        branches.extend(f"            {x}" for x in body)
    used = "\n".join(branches)
    declared = [f"    {declared}" for name, declared in _LOCALS if re.search(rf"\b{name}\b", used)]
    head = f"{reader.name}(Span msg, int depth, {table.struct}* f)"
    return _function(table, head, reader.message.full_name, declared + _DEPTH, branches)


def _pair_reader(table: Table) -> list[str]:
    return _function(
        table,
        "scan_pair(Span msg, int depth, bint text_value, Span* key, Span* value)",
        "A map entry: key and value (a string, or bytes unless text_value), the last of each wins.",
        [*_DEPTH, "    key.ptr = NULL", "    key.len = 0", "    value.ptr = NULL", "    value.len = 0"],
        [
            "        if tag == T_MAP_KEY:",
            "            err = read_text(&p, end, key)",
            "        elif tag == T_MAP_VALUE:",
            "            err = read_text(&p, end, value) if text_value else read_span(&p, end, value)",
        ],
    )


def cython(table: Table) -> str:
    readers = _readers(table)
    header = [
        f"# Generated by remixer/kit/native/wiregen.py from {table.source} and the descriptors of",
        f"# {', '.join(table.modules)}.",
        "# Do not edit: change the table, then run `make protos` (tests check this file is fresh).",
        "",
    ]
    parts = [header, _constants(table, readers), _time_struct(table), _struct(table, readers)]
    for reader in readers:
        parts += [["", ""], _reader(table, reader)]
    times = _times(table)
    if times:
        parts += [["", ""], _time_reader(table, times)]
    if any(line.reader in _MAP_READERS for line in table.lines):
        parts += [["", ""], _pair_reader(table)]
    return "\n".join(line for part in parts for line in part) + "\n"


def main(argv: list[str]) -> None:
    table, out = Path(argv[0]), Path(argv[1])
    out.write_text(cython(load(table)))


if __name__ == "__main__":
    main(sys.argv[1:])


# ---- JSON record writers --------------------------------------------------------------------------
#
# The other direction: a C struct of one message's fields and a writer that appends them to a JSON object
# as orjson writes them (`"name":value`, proto field names, in the order given, then `}`), for a compiled
# module whose records must equal a Python encoder's bytes. The fields, their names and types come from
# the descriptor the caller selects them from (protos/regenerate.py: telemetry/core/records.py's fields).
# The writer calls helpers the including module defines: put(w, text, n), put_i64, put_u64, put_double
# (orjson's float text), put_escaped(w, ptr, n) (a JSON string body) and truncated(span, max_chars).

_JSON_WRITERS = {
    FieldDescriptor.TYPE_STRING: ("Span", "put_escaped"),
    FieldDescriptor.TYPE_INT64: ("int64_t", "put_i64"),
    FieldDescriptor.TYPE_UINT64: ("uint64_t", "put_u64"),
    FieldDescriptor.TYPE_UINT32: ("uint32_t", "put_u64"),
    FieldDescriptor.TYPE_DOUBLE: ("double", "put_double"),
}
_NUMBER_TEXT = 32  # the longest number any writer above puts (a double's repr: 24 characters)
_ESCAPED = 6  # the longest a string byte becomes (\u00XX)


def _json_literal(text: str) -> str:
    return f"w = put(w, {text.encode()!r}, {len(text.encode())})"


def json_writer(fields: tuple[FieldDescriptor, ...], struct: str, source: str) -> str:
    """A Cython include: `cdef struct STRUCT` (one member per field, named as the field), `size_STRUCT`
    (an upper bound of what the writer puts) and `put_STRUCT(w, r, max_chars)`, which writes the fields
    as the rest of a JSON object, string values cut to max_chars characters."""
    unknown = [f.full_name for f in fields if f.type not in _JSON_WRITERS or f.is_repeated]
    if unknown:
        raise TableError(f"no JSON writer for {', '.join(unknown)}")
    strings = [f for f in fields if f.type == FieldDescriptor.TYPE_STRING]
    # per field `,"name":` and a number or two quotes, then `}`
    fixed = sum(len(f.name) + 4 for f in fields) + _NUMBER_TEXT * (len(fields) - len(strings))
    fixed += 2 * len(strings) + 1
    out = [
        f"# Generated by remixer/kit/native/wiregen.py (json_writer) from {source}.",
        "# Do not edit: change the .proto, then run `make protos` (tests check this file is fresh).",
        "",
        f"cdef struct {struct}:",
        *(f"    {_JSON_WRITERS[f.type][0]} {f.name}  # {f.full_name} = {f.number}" for f in fields),
        "",
        "",
        f"cdef inline Py_ssize_t size_{struct}({struct}* r) noexcept:",
        f"    return {fixed}" + "".join(f" + {_ESCAPED} * r.{f.name}.len" for f in strings),
        "",
        "",
        f"cdef char* put_{struct}(char* w, {struct}* r, Py_ssize_t max_chars) except NULL:",
    ]
    pending = ""
    for i, field in enumerate(fields):
        kind, writer = _JSON_WRITERS[field.type]
        pending += ("," if i else "") + f'"{field.name}":'
        if kind == "Span":
            out.append("    " + _json_literal(pending + '"'))
            out.append(f"    w = {writer}(w, r.{field.name}.ptr, truncated(r.{field.name}, max_chars))")
            pending = '"'
        else:
            out.append("    " + _json_literal(pending))
            out.append(f"    w = {writer}(w, r.{field.name})")
            pending = ""
    out += ["    " + _json_literal(pending + "}"), "    return w"]
    return "\n".join(out) + "\n"
