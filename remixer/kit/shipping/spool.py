"""A size-capped, append-only on-disk spool of records, read back oldest first.

Layout: DIR/<16-digit sequence>.seg segment files, each a run of frames
`>iI` (key length, -1 for no key; value length) + key + value, and DIR/read.pos holding
"<segment sequence> <byte offset>" of the first record not yet shipped. Segments behind the read
position are deleted. After a crash, reading restarts at the last committed position: records
may be sent twice, never lost (at-least-once).
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from remixer.kit.parts import Record

_FRAME = struct.Struct(">iI")
_SUFFIX = ".seg"


@dataclass(frozen=True, slots=True)
class SpoolCursor:
    """Where a read ended: commit it once the records read are safely shipped."""

    segment: int
    offset: int


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: list[int] = sorted(
            int(p.name[: -len(_SUFFIX)])
            for p in directory.glob(f"*{_SUFFIX}")
            if p.name[: -len(_SUFFIX)].isascii() and p.name[: -len(_SUFFIX)].isdigit()
        )
        self._sizes: dict[int, int] = {seq: self._path(seq).stat().st_size for seq in self._segments}
        self._read = self._load_position()
        self._writer: BinaryIO | None = None
        self._writer_seq = -1
        self._started: dict[int, float] = {}

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:016d}{_SUFFIX}"

    def _load_position(self) -> SpoolCursor:
        try:
            seq_text, offset_text = (self.directory / "read.pos").read_text().split()
            cursor = SpoolCursor(int(seq_text), int(offset_text))
        except (OSError, ValueError):
            return SpoolCursor(self._segments[0] if self._segments else 0, 0)
        if cursor.segment not in self._sizes:
            return SpoolCursor(self._segments[0] if self._segments else 0, 0)
        return cursor

    # ---- size and age ----------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        total = sum(self._sizes.values())
        if self._read.segment in self._sizes:
            total -= self._read.offset
        return max(total, 0)

    @property
    def empty(self) -> bool:
        return self.size_bytes == 0

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds since the oldest unshipped segment was started (0 when empty)."""
        if self.empty or not self._segments:
            return 0.0
        first = self._segments[0]
        started = self._started.get(first)
        if started is None:
            try:
                started = self._started[first] = self._path(first).stat().st_mtime
            except OSError:
                return 0.0
        return max((now or time.time()) - started, 0.0)

    # ---- writing ---------------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> int:
        """Append as many records as the cap allows, in order; returns how many were written."""
        if not records:
            return 0
        used = self.size_bytes
        chunks: list[bytes] = []
        chunk_len = 0
        written = 0
        for key, value in records:
            frame_len = _FRAME.size + (len(key) if key is not None else 0) + len(value)
            if used + frame_len > self.max_bytes:
                break
            chunks.append(_FRAME.pack(-1 if key is None else len(key), len(value)))
            if key is not None:
                chunks.append(key)
            chunks.append(value)
            used += frame_len
            chunk_len += frame_len
            written += 1
            if self._segment_fill() + chunk_len >= self.segment_bytes:
                self._write(b"".join(chunks))
                chunks, chunk_len = [], 0
        if chunks:
            self._write(b"".join(chunks))
        return written

    def _segment_fill(self) -> int:
        """Bytes in the segment the next write goes to (0 when it will start a new one)."""
        if self._writer is None:
            return 0
        size = self._sizes.get(self._writer_seq, 0)
        return size if size < self.segment_bytes else 0

    def _write(self, data: bytes) -> None:
        if self._writer is None or self._sizes.get(self._writer_seq, 0) >= self.segment_bytes:
            self._roll()
        assert self._writer is not None
        self._writer.write(data)
        self._writer.flush()
        self._sizes[self._writer_seq] += len(data)

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        seq = (self._segments[-1] + 1) if self._segments else max(self._read.segment, 0)
        self._segments.append(seq)
        self._sizes[seq] = 0
        self._started[seq] = time.time()
        self._writer = self._path(seq).open("ab")
        self._writer_seq = seq
        if len(self._segments) == 1:
            self._read = SpoolCursor(seq, 0)

    # ---- reading ---------------------------------------------------------------------------------

    def read(self, *, max_records: int, max_bytes: int) -> tuple[list[Record], SpoolCursor]:
        """Up to max_records from the read position (never splitting a frame); commit the cursor later."""
        records: list[Record] = []
        cursor = self._read
        budget = max_bytes
        while len(records) < max_records and budget > 0 and cursor.segment in self._sizes:
            size = self._sizes[cursor.segment]
            if cursor.offset >= size:
                following = [s for s in self._segments if s > cursor.segment]
                if not following:
                    break
                cursor = SpoolCursor(following[0], 0)
                continue
            with self._path(cursor.segment).open("rb") as segment:
                segment.seek(cursor.offset)
                data = segment.read(min(max(budget, 64 * 1024), size - cursor.offset))
            pos = 0
            while len(records) < max_records and pos + _FRAME.size <= len(data):
                key_len, value_len = _FRAME.unpack_from(data, pos)
                end = pos + _FRAME.size + max(key_len, 0) + value_len
                if end > len(data):
                    break
                start = pos + _FRAME.size
                key = data[start : start + key_len] if key_len >= 0 else None
                records.append((key, data[start + max(key_len, 0) : end]))
                pos = end
            if pos == 0:
                if len(data) >= size - cursor.offset:
                    # A torn frame at the end of a segment (crash mid-write): skip the rest of it.
                    cursor = SpoolCursor(cursor.segment, size)
                    continue
                break
            cursor = SpoolCursor(cursor.segment, cursor.offset + pos)
            budget -= pos
        return records, cursor

    def commit(self, cursor: SpoolCursor) -> None:
        """Everything before `cursor` is shipped: forget it (delete finished segments)."""
        self._read = cursor
        for seq in list(self._segments):
            finished = seq < cursor.segment or (
                seq == cursor.segment and cursor.offset >= self._sizes[seq] and seq != self._writer_seq
            )
            if not finished:
                break
            self._segments.remove(seq)
            del self._sizes[seq]
            with contextlib.suppress(FileNotFoundError):
                self._path(seq).unlink()
        if not self._segments:
            self._read = SpoolCursor(cursor.segment + 1, 0)
        elif self._read.segment not in self._sizes:
            self._read = SpoolCursor(self._segments[0], 0)
        if self._writer_seq == self._read.segment and self._read.offset >= self._sizes.get(
            self._writer_seq, 0
        ):
            # Fully drained: start the next write in a fresh segment so this one can go.
            self._close_writer()
            seq = self._read.segment
            self._segments.remove(seq)
            del self._sizes[seq]
            with contextlib.suppress(FileNotFoundError):
                self._path(seq).unlink()
            self._read = SpoolCursor(seq + 1, 0)
        self._save_position()

    def _save_position(self) -> None:
        tmp = self.directory / "read.pos.tmp"
        tmp.write_text(f"{self._read.segment} {self._read.offset}")
        os.replace(tmp, self.directory / "read.pos")

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._writer_seq = -1

    def close(self) -> None:
        self._close_writer()
