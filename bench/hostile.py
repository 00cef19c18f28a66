"""What hostile input makes `remixer serve` hold: RSS before, at the peak of and after a round of probes.

One remixer (policy, telemetry, admin; Kafka off) on free ports. Baseline: its RSS after warm-up traffic.
Probes, in order: 1,600 connections each sending an unterminated 250 KB HTTP ext_authz head, held 15 s;
request-smuggling probes (TE.CL, CL.CL, `Content-Length :`), counting how many got a second answer;
300 KB heads; undecodable access-log messages; one access-log message of 50,000 entries. Then 25 s of
quiet. Run it from a checkout to measure that checkout (the server is started from the current directory).

    .venv/bin/python bench/hostile.py

Last line: `hostile_rss_after: X (MB) ratio: Y` (RSS after the probes / baseline).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import yaml
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

ALS = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
MB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def als_message(entries: int, *, first: bool) -> bytes:
    msg = als_pb2.StreamAccessLogsMessage()
    if first:
        msg.identifier.log_name = "http_envoy_accesslog"
        msg.identifier.node.id = "sidecar~10.0.0.1~web-1.shop~shop.svc.cluster.local"
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.common_properties.upstream_cluster = "outbound|80||api.shop.svc.cluster.local"
    entry.response.response_code.value = 200
    entry.request.path = "/p"
    msg.http_logs.log_entry.extend([entry] * entries)
    return msg.SerializeToString()


def send_als(target: str, messages: list[bytes]) -> str:
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * MB)]) as channel:
        call = channel.stream_unary(ALS, request_serializer=None, response_deserializer=None)
        try:
            call(iter(messages), timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


async def slow_head(port: int, hold: float) -> None:
    with contextlib.suppress(OSError):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /slow HTTP/1.1\r\nhost: a\r\nx-pad: " + b"a" * (250 * 1024))
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.drain(), hold)
                await asyncio.wait_for(reader.read(64), hold)
        finally:
            writer.close()


def answers(port: int, raw: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    return data.count(b"HTTP/1.1 ")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="remixer-bench-hostile-"))
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    config = {
        "server": {
            "grpc_address": f"127.0.0.1:{grpc_port}",
            "admin_address": f"127.0.0.1:{admin_port}",
            "data_dir": str(workdir / "data"),
        },
        "policy": {"http_address": f"127.0.0.1:{http_port}"},
    }
    (workdir / "remixer.yaml").write_text(yaml.safe_dump(config))
    log = (workdir / "remixer.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "remixer", "serve", "--config", str(workdir / "remixer.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"remixer did not start; see {workdir / 'remixer.log'}")
            time.sleep(0.2)
        base = f"http://127.0.0.1:{http_port}"
        with httpx.Client() as client:
            for i in range(300):
                client.get(f"{base}/warm/{i}")
        send_als(
            f"127.0.0.1:{grpc_port}", [als_message(50, first=True)] + [als_message(50, first=False)] * 40
        )
        time.sleep(2)
        baseline = rss(proc.pid)
        started = time.monotonic()

        async def slow() -> None:
            await asyncio.gather(*(slow_head(http_port, 15) for _ in range(1600)))

        asyncio.run(slow())
        after_slow = rss(proc.pid)
        body = b"0\r\n\r\nGET /admin HTTP/1.1\r\nhost: a\r\n\r\n"
        probes = [
            b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body,
            b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body,
            f"POST /x HTTP/1.1\r\nhost: a\r\nContent-Length : {len(body)}\r\n\r\n".encode() + body,
        ]
        second_answers = sum(answers(http_port, probe) > 1 for probe in probes * 30)
        for _ in range(100):
            answers(http_port, b"GET / HTTP/1.1\r\nx: " + b"v" * 300_000 + b"\r\n\r\n")
        garbage = [send_als(f"127.0.0.1:{grpc_port}", [b"\xff\xfe garbage" * 100]) for _ in range(100)]
        huge = send_als(f"127.0.0.1:{grpc_port}", [als_message(50_000, first=True)])
        peak = rss(proc.pid, "VmHWM")
        time.sleep(25)
        after = rss(proc.pid)
        alive = httpx.get(f"{base}/after", timeout=5).status_code
        print(
            f"RSS baseline {baseline / MB:.0f} MB, after 1,600 slow 250 KB heads {after_slow / MB:.0f} MB, "
            f"peak {peak / MB:.0f} MB, 25 s after all probes {after / MB:.0f} MB; smuggling probes answered "
            f"twice: {second_answers} of {len(probes) * 30}; undecodable ALS answered "
            f"{sorted(set(garbage))}; 50,000-entry ALS message: {huge}; still serving: {alive}; "
            f"probes took {time.monotonic() - started - 25:.0f} s"
        )
        print(f"hostile_rss_after: {after / MB:.0f} (MB) ratio: {after / baseline:.2f}")
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        log.close()


if __name__ == "__main__":
    main()
