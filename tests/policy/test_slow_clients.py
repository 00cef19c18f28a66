"""What 1,600 slow clients can make `remixer serve` hold (HTTP ext_authz mode), measured on the real
process: each opens a connection and sends a request head that never ends (a slowloris with large
heads). With the default settings a 250 KB head is refused 431 at 64 KB; 60 KB heads fit that cap, so
the head budget (policy.http_head_budget_bytes) answers those beyond it 503 at once and the head
timeout closes the rest. Either way RSS may rise by 50 MB at most and comes back to its baseline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from tests.realparts.remixer import RemixerFactory

CLIENTS = 1_600


def head(size: int) -> bytes:
    return b"GET /slow HTTP/1.1\r\nhost: shop.example\r\nx-pad: " + b"a" * size  # no CRLF CRLF


MB = 1 << 20


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


async def slow_client(port: int, data: bytes, answers: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        # Wait for the server to answer or close (the head timeout); never finish the head. A reset
        # (the server's lingering close ran out while this client was still sending) is a close too.
        try:
            answers.append(await reader.read(64))
        except ConnectionError:
            answers.append(b"")
    finally:
        writer.close()


@pytest.mark.parametrize("head_kb", [250, 60])
def test_slow_clients_with_large_heads_are_bounded(remixer_factory: RemixerFactory, head_kb: int) -> None:
    server = remixer_factory(
        server={"parts": ["policy", "admin"]},
        policy={"http_header_timeout_s": 5.0, "http_idle_timeout_s": 5.0},
    )
    assert server.proc is not None
    pid = server.proc.pid
    base = f"http://127.0.0.1:{server.http_authz_port}"
    with httpx.Client() as client:  # warm the Check path before taking the baseline
        for _ in range(200):
            assert client.get(base + "/warm").status_code == 200
    baseline = memory(pid)["VmRSS"]
    reset_peak(pid)

    async def run() -> list[bytes]:
        answers: list[bytes] = []
        data = head(head_kb * 1024)
        await asyncio.gather(*(slow_client(server.http_authz_port, data, answers) for _ in range(CLIENTS)))
        return answers

    started = time.monotonic()
    answers = asyncio.run(run())
    took = time.monotonic() - started
    peak = memory(pid)["VmHWM"]
    refused = sum(a.startswith((b"HTTP/1.1 431", b"HTTP/1.1 503")) for a in answers)
    timed_out = sum(a == b"" for a in answers)
    statuses = {a[:12] for a in answers}
    assert refused + timed_out == CLIENTS, [
        a for a in answers if a[:12] not in (b"HTTP/1.1 431", b"HTTP/1.1 503", b"")
    ][:3]
    # The server still answers.
    assert httpx.get(base + "/after", timeout=5).status_code == 200
    deadline = time.monotonic() + 30
    while (after := memory(pid)["VmRSS"]) > baseline * 1.2 and time.monotonic() < deadline:
        time.sleep(0.5)
    print(
        f"slow clients: {CLIENTS} x {head_kb} KB heads in {took:.1f}s, {refused} refused (431, 503), "
        f"{timed_out} closed at the head timeout; RSS baseline {baseline / MB:.0f} MB, "
        f"peak {peak / MB:.0f} MB (+{(peak - baseline) / MB:.0f}), after {after / MB:.0f} MB"
    )
    if head_kb == 250:
        assert statuses <= {b"HTTP/1.1 431", b""}
        assert refused > CLIENTS * 0.9
    else:
        assert statuses == {b"HTTP/1.1 503", b""}  # over the budget, or held until the head timeout
    assert peak - baseline <= 50 * MB
    assert after <= baseline * 1.2
