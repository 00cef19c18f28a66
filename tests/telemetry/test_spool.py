"""The on-disk spool: order, size cap, commit, restart."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from remixer.kit.shipping.spool import Spool


def records(n: int, start: int = 0, size: int = 10) -> list[tuple[bytes | None, bytes]]:
    return [
        (None if i % 5 == 0 else f"k{i}".encode(), f"{i:0{size}d}".encode()) for i in range(start, start + n)
    ]


def test_append_read_commit_keeps_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    assert spool.append(records(1000)) == 1000
    assert len(list(tmp_path.glob("*.seg"))) > 3
    got: list[tuple[bytes | None, bytes]] = []
    while not spool.empty:
        batch, cursor = spool.read(max_records=97, max_bytes=5000)
        got.extend(batch)
        spool.commit(cursor)
    assert got == records(1000)
    assert list(tmp_path.glob("*.seg")) == []
    assert spool.size_bytes == 0


def test_cap_drops_what_does_not_fit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2000, segment_bytes=4096)
    written = spool.append(records(500))
    assert 0 < written < 500
    assert spool.size_bytes <= 2000
    assert spool.append(records(10)) == 0  # full


def test_uncommitted_records_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=2048)
    spool.append(records(300))
    _, cursor = spool.read(max_records=100, max_bytes=1 << 20)
    spool.commit(cursor)
    spool.read(max_records=100, max_bytes=1 << 20)  # read but never committed: must come back
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=2048)
    rest, cursor = again.read(max_records=1000, max_bytes=1 << 20)
    assert rest == records(200, start=100)
    again.commit(cursor)
    assert again.empty


def test_a_torn_frame_at_the_end_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    spool.append(records(10))
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    with segment.open("ab") as f:
        f.write(b"\x00\x00\x00\x05\x00\x00")  # a crash mid-frame
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    got, cursor = again.read(max_records=100, max_bytes=1 << 20)
    assert got == records(10)
    again.commit(cursor)
    more, _ = again.read(max_records=100, max_bytes=1 << 20)
    assert more == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 30)), min_size=1, max_size=20))
def test_interleaved_appends_and_reads_lose_nothing(
    tmp_path_factory: object, plan: list[tuple[int, int]]
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp), max_bytes=1 << 20, segment_bytes=300)
        sent = 0
        got: list[tuple[bytes | None, bytes]] = []
        for add, take in plan:
            spool.append(records(add, start=sent))
            sent += add
            batch, cursor = spool.read(max_records=take, max_bytes=1 << 20)
            got.extend(batch)
            spool.commit(cursor)
        while not spool.empty:
            batch, cursor = spool.read(max_records=50, max_bytes=1 << 20)
            got.extend(batch)
            spool.commit(cursor)
        assert got == records(sent)
