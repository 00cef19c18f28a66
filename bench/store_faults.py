"""The policy store failed from outside, and the admin API under hostile bodies, against `remixer serve`.

A PostgreSQL store reached through a TCP proxy process (tests/realparts/tcpproxy.py) which is frozen with
SIGSTOP: connections are still accepted, nothing answers. Measured:
- Checks at a fixed rate (a separate client process, Envoy's 0.5 s ext_authz timeout as the deadline),
  in alternating healthy / frozen phases of the same run: errors and latency percentiles per phase;
- admin writes and audit reads while the store is frozen: status and seconds;
- a 50 MB junk PUT without a token and a 21 MB list (2M entries) with one: status, seconds, bytes the
  client could send before the answer, the server's peak RSS growth; audit with ?limit=0.

    .venv/bin/python bench/store_faults.py [--src DIR] [--phase-seconds 15] [--rate 400] [--rounds 2]

`--src` runs the server from another source tree (e.g. a checkout of an earlier commit) with this
client, so earlier and current code are measured alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import yaml  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from remixer.kit.envoy import free_port  # noqa: E402
from tests.realparts.tcpproxy import TcpProxy  # noqa: E402

TOKEN = "bench-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def check_requests(count: int) -> list[bytes]:
    from envoy.service.auth.v3 import external_auth_pb2

    out = []
    rng = random.Random(7)
    for i in range(count):
        msg = external_auth_pb2.CheckRequest()
        msg.attributes.source.address.socket_address.address = f"10.0.{i % 250}.{rng.randrange(250)}"
        http = msg.attributes.request.http
        http.method = "GET"
        http.path = f"/{rng.choice(['api', 'admin', 'shop'])}/{rng.randrange(100000)}"
        http.host = "shop.example"
        http.headers["x-request-id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        out.append(bytes(msg.SerializeToString()))
    return out


async def client(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: call i starts at t0 + i/rate whatever the earlier calls do."""
    import grpc

    requests = check_requests(5000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        await call(requests[0], timeout=5)
        latencies: list[float] = []
        errors: dict[str, int] = {}

        async def one(data: bytes) -> None:
            started = time.perf_counter()
            try:
                await call(data, timeout=0.5)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

        tasks = []
        t0 = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(requests[i % len(requests)])))
        await asyncio.gather(*tasks)
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

    return {
        "calls": len(tasks),
        "errors": errors,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
    }


def run_client(port: int, rate: float, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--client", str(port), str(rate), str(seconds)],
        capture_output=True,
        check=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def start_server(
    src: Path, workdir: Path, proxy_port: int, schema: str
) -> tuple[subprocess.Popen[bytes], int, int]:
    grpc_port, admin_port = free_port(), free_port()
    policy = {
        "rules": [{"id": "deny-admin", "action": "deny", "match": {"request.path": {"prefix": "/admin"}}}]
    }
    (workdir / "policy.yaml").write_text(yaml.safe_dump(policy))
    config = {
        "server": {
            "parts": ["policy", "admin"],
            "grpc_address": f"127.0.0.1:{grpc_port}",
            "admin_address": f"127.0.0.1:{admin_port}",
            "data_dir": str(workdir / "data"),
            "admin_token": TOKEN,
            "log_level": "warning",
        },
        "policy": {
            "http_enabled": False,
            "database_url": f"postgresql://postgres@127.0.0.1:{proxy_port}/test",
            "database_schema": schema,
            "policy_files": [str(workdir / "policy.yaml")],
            "reload_interval": 0.2,
        },
    }
    (workdir / "remixer.yaml").write_text(yaml.safe_dump(config))
    log = (workdir / "remixer.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "remixer", "serve", "--config", str(workdir / "remixer.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=src,
        env={**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status_code == 200:
                return proc, grpc_port, admin_port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError((workdir / "remixer.log").read_text()[-3000:])


def max_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def junk_put(port: int, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """Send the head and as much of the body as the server takes until it answers."""
    head = [f"PUT {path} HTTP/1.1", f"host: 127.0.0.1:{port}", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    started = time.monotonic()
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.setblocking(False)
        while not answer and time.monotonic() - started < 120:
            try:
                answer = sock.recv(65536)
                break
            except BlockingIOError:
                pass
            if sent < len(body):
                try:
                    sent += sock.send(body[sent : sent + 65536])
                except BlockingIOError:
                    time.sleep(0.0005)
                except OSError:
                    break
            else:
                time.sleep(0.005)
        if not answer:
            sock.settimeout(120)
            try:
                answer = sock.recv(65536)
            except OSError:
                answer = b""
    status = int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0
    text = answer.split(b"\r\n\r\n", 1)[-1][:160].decode(errors="replace")
    return {
        "status": status,
        "seconds": round(time.monotonic() - started, 2),
        "mb_sent": round(sent / 2**20, 1),
        "said": text,
    }


def timed(method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        answer = httpx.request(method, url, timeout=120, **kwargs)
        status, said = answer.status_code, answer.text[:160]
    except httpx.HTTPError as exc:
        status, said = 0, repr(exc)
    return {"status": status, "seconds": round(time.monotonic() - started, 2), "said": said}


async def drop_schema(name: str) -> None:
    engine = create_async_engine(POSTGRES.replace("postgresql://", "postgresql+asyncpg://"))
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", type=Path, default=ROOT)
    parser.add_argument("--phase-seconds", type=float, default=15)
    parser.add_argument("--rate", type=float, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checks-only", action="store_true", help="skip the admin API measurements")
    args = parser.parse_args()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy("127.0.0.1", 5432)
    results: dict[str, Any] = {"src": str(args.src)}
    with tempfile.TemporaryDirectory() as tmp:
        proc, grpc_port, admin_port = start_server(args.src.resolve(), Path(tmp), proxy.port, schema)
        admin = f"http://127.0.0.1:{admin_port}"
        try:
            phases: dict[str, list[dict[str, Any]]] = {"healthy": [], "frozen": []}
            for _ in range(args.rounds):
                for phase in ("healthy", "frozen"):
                    if phase == "frozen":
                        proxy.freeze()
                    phases[phase].append(run_client(grpc_port, args.rate, args.phase_seconds))
                    if phase == "frozen":
                        proxy.thaw()
                        time.sleep(2)
            results["checks"] = {
                phase: {
                    "calls": sum(r["calls"] for r in runs),
                    "errors": sum(sum(r["errors"].values()) for r in runs),
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                    "p99_ms_each": [r["p99_ms"] for r in runs],
                    "max_ms": max(r["max_ms"] for r in runs),
                }
                for phase, runs in phases.items()
            }
            h, f = results["checks"]["healthy"], results["checks"]["frozen"]
            results["checks"]["p99_frozen_over_healthy"] = round(f["p99_ms"] / h["p99_ms"], 3)
            # Each frozen phase over the healthy phase just before it: slow drift of the shared
            # machine's load cancels out of these pairs.
            pairs = [b / a for a, b in zip(h["p99_ms_each"], f["p99_ms_each"], strict=True)]
            results["checks"]["p99_ratio_paired_median"] = round(statistics.median(pairs), 3)

            if args.checks_only:
                return
            proxy.freeze()
            rule = {"action": "deny", "match": {"request.path": {"prefix": "/x"}}}
            results["frozen_store_admin"] = {
                "put_rule": timed("PUT", admin + "/v1/rules/x", json=rule, headers=AUTH),
                "audit": timed("GET", admin + "/v1/policy/audit"),
                "revision": timed("GET", admin + "/v1/policy/revision"),
            }
            proxy.thaw()
            time.sleep(3)

            rss = max_rss_mb(proc.pid)
            junk = os.urandom(50 * 2**20)
            results["junk_50mb_no_token"] = junk_put(
                admin_port, "/v1/lists/junk", {"content-type": "application/json"}, junk
            )
            entries = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(2_000_000)]
            big = json.dumps({"kind": "ip", "entries": entries}).encode()
            results["list_2m_entries"] = {
                "body_mb": round(len(big) / 2**20, 1),
                **junk_put(admin_port, "/v1/lists/big", {**AUTH, "content-type": "application/json"}, big),
            }
            results["server_peak_rss_growth_mb"] = round(max_rss_mb(proc.pid) - rss, 1)
            results["audit_limit_0"] = timed("GET", admin + "/v1/policy/audit?limit=0")
        finally:
            proc.terminate()
            proc.wait(30)
            proxy.stop()
            asyncio.run(drop_schema(schema))
            print(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        print(json.dumps(asyncio.run(client(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))))
    else:
        main()
