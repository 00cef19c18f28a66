"""Kafka off (the default): a stream's records kept in local files, rotated and bounded.

Layout: DIR/<UTC start time>.jsonl (JSON records, one per line: `cat *.jsonl | jq .`) or .binpb
(protobuf records, each after its varint length, the "delimited" framing: `remixer records print`).
Names sort in time order. A file is closed at `file_bytes`; files older than the retention and the
oldest beyond `max_bytes` are deleted, and their records counted as dropped (reason "retention").
Nothing here is shipped later: with Kafka on, the spool (spool.py) holds what waits for the broker.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from remixer.kit.parts import Record

SUFFIXES = (".jsonl", ".binpb")
_CHECK_EVERY_S = 60.0


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(data: bytes) -> list[bytes]:
    """The messages of a .binpb file (varint length, then the message, repeated)."""
    messages = []
    pos = 0
    while pos < len(data):
        length = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        messages.append(data[pos : pos + length])
        pos += length
    return messages


def count_records(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") if path.suffix == ".jsonl" else len(delimited(data))


class RecordFiles:
    """A stream's local record store, in the place of its spool when Kafka is off (the hub calls
    append(); nothing is ever read back to be shipped, so it is always `empty`)."""

    stores_locally = True

    def __init__(
        self,
        directory: Path,
        *,
        file_bytes: int,
        max_bytes: int,
        retention_s: float,
        on_drop: Callable[[int], None],
        now: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.file_bytes = file_bytes
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self._on_drop = on_drop
        self._now = now
        directory.mkdir(parents=True, exist_ok=True)
        self._writer: BinaryIO | None = None
        self._path: Path | None = None
        self._size = 0
        self._json = True
        self._checked = 0.0

    # ---- the spool's interface, as the hub uses it -------------------------------------------------

    empty = True
    size_bytes = 0  # nothing waits to be shipped

    def oldest_age(self, now: float | None = None) -> float:
        return 0.0

    def append(self, records: Sequence[Record]) -> int:
        if not records:
            return 0
        if self._writer is None:
            self._rotate(json=records[0][1][:1] == b"{")
        chunk: list[bytes] = []
        size = self._size
        for _, value in records:
            if size >= self.file_bytes:
                self._write(chunk)
                chunk = []
                self._rotate(json=value[:1] == b"{")
                size = self._size
            frame = value + b"\n" if self._json else varint(len(value)) + value
            chunk.append(frame)
            size += len(frame)
        self._write(chunk)
        if self._now() - self._checked >= _CHECK_EVERY_S:
            self.enforce_bounds()
        return len(records)

    def _write(self, chunk: list[bytes]) -> None:
        assert self._writer is not None
        data = b"".join(chunk)
        self._writer.write(data)
        self._writer.flush()
        self._size += len(data)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None

    # ---- files ---------------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.suffix in SUFFIXES)

    def stored_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def _rotate(self, *, json: bool) -> None:
        self.close()
        stamp = datetime.fromtimestamp(self._now(), UTC).strftime("%Y%m%dT%H%M%S%fZ")
        suffix = ".jsonl" if json else ".binpb"
        path = self.directory / (stamp + suffix)
        same = 0
        while path.exists() and path.stat().st_size >= self.file_bytes:  # two rotations in one tick
            same += 1
            path = self.directory / f"{stamp}-{same:04d}{suffix}"
        self._json = json
        self._writer = path.open("ab")
        self._path = path
        self._size = path.stat().st_size
        self.enforce_bounds()

    def enforce_bounds(self) -> None:
        """Delete files past the retention, then the oldest while the stream holds more than
        max_bytes (never the file being written); their records count as dropped."""
        self._checked = now = self._now()
        files = [p for p in self.files() if p != self._path]
        sizes = {p: p.stat().st_size for p in files}
        total = sum(sizes.values()) + self._size
        for path in files:
            expired = self.retention_s > 0 and now - path.stat().st_mtime > self.retention_s
            if not expired and total <= self.max_bytes:
                break
            dropped = count_records(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= sizes[path]
            self._on_drop(dropped)
