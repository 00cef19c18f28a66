"""Benchmark the ext_authz Check path: remixer's policy vs a bare grpc.aio allow-all servicer.

Same machine, same run, same client (a separate process), every server with remixer serve's process
settings (settle_heap: GC thresholds, glibc heap retention): (a) remixer with 200 rules, lists and a
quota, decision cache off; (b) remixer with the cache hitting; (c) a bare grpc.aio servicer that
allows everything; (d) remixer's HTTP ext_authz mode. Besides throughput it reports each server's
CPU time per call (from /proc), which stays meaningful even when the client is the bottleneck.

Load client: h2load (Debian `nghttp2-client`) when installed -- C, cheap enough that the single-process
server saturates; it repeats one Envoy-shaped request per case, so "no cache" means the decision
cache is switched off in that server. Otherwise a Python asyncio client process cycling through
20k varied requests (on 2 cores that client often saturates before the server does).

    .venv/bin/python bench/check.py [--duration 5] [--repeat 3] [--concurrency 64]

Last line: `check_throughput: X (req/s) ratio: Y` (remixer without cache hits / bare servicer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVICES = [
    "catalog",
    "cart",
    "checkout",
    "payment",
    "users",
    "search",
    "reviews",
    "ratings",
    "orders",
    "ship",
]


# ---- the policy: 200 rules, lists and a quota ----------------------------------------------------


def bench_policy() -> dict[str, Any]:
    rng = random.Random(7)
    rules: list[dict[str, Any]] = []
    for i in range(120):  # path-scoped denies, the bulk of a real policy
        svc = SERVICES[i % len(SERVICES)]
        rules.append(
            {
                "id": f"deny-{svc}-{i}",
                "action": "deny",
                "match": {
                    "request.path": {"prefix": f"/{svc}/internal/{i}/"},
                    "request.method": {"in": ["POST", "PUT", "DELETE"]},
                },
                "deny": {"status": 403, "body": f"{svc} internal\n"},
            }
        )
    for i in range(30):  # header / identity conditions that no index can skip
        rules.append(
            {
                "id": f"deny-hdr-{i}",
                "action": "deny",
                "match": {
                    "request.headers.x-tenant": {"exact": f"blocked-{i}"},
                    "source.namespace": {"exact": f"ns-{i}"},
                },
            }
        )
    rules.append(
        {"id": "deny-ips", "action": "deny", "match": {"source.address": {"in_list": "blocked-nets"}}}
    )
    rules.append(
        {
            "id": "deny-agents",
            "action": "deny",
            "match": {"request.headers.user-agent": {"in_list": "bad-agents"}},
        }
    )
    for i in range(10):
        rules.append(
            {
                "id": f"deny-re-{i}",
                "action": "deny",
                "match": {"request.path": {"regex": f"/{SERVICES[i]}/v[0-9]+/export/.*\\.csv"}},
            }
        )
    rules.append(
        {
            "id": "limit-search",
            "action": "rate_limit",
            "limit": "search-per-user",
            "match": {"request.path": {"prefix": "/search/"}},
        }
    )
    for i in range(36):
        svc = SERVICES[i % len(SERVICES)]
        rules.append(
            {
                "id": f"allow-{svc}-{i}",
                "action": "allow",
                "match": {"request.path": {"prefix": f"/{svc}/v{i}/"}},
                "allow": {"headers": {"x-policy": f"{svc}-{i}"}},
            }
        )
    rules.append({"id": "allow-get", "action": "allow", "match": {"request.method": {"in": ["GET", "HEAD"]}}})
    assert len(rules) == 200
    return {
        "lists": [
            {
                "name": "blocked-nets",
                "kind": "cidr",
                "entries": [f"172.{rng.randrange(16, 32)}.{rng.randrange(256)}.0/24" for _ in range(1000)],
            },
            {"name": "bad-agents", "kind": "string", "entries": [f"scanner-{i}/1.0" for i in range(500)]},
        ],
        "limits": [
            {
                "name": "search-per-user",
                "requests": 1_000_000,
                "unit": "minute",
                "algorithm": "sliding_window",
                "descriptor": ["request.headers.x-user"],
            }
        ],
        "rules": rules,
    }


# ---- requests shaped like Envoy 1.40's ------------------------------------------------------------


def check_requests(count: int, *, seed: int) -> list[bytes]:
    from envoy.service.auth.v3 import external_auth_pb2

    rng = random.Random(seed)
    out = []
    for n in range(count):
        svc = rng.choice(SERVICES)
        if rng.random() < 0.1:
            path = f"/search/?q=item{rng.randrange(1000)}&page={rng.randrange(5)}"
        else:
            item = rng.randrange(100000)
            path = f"/{svc}/v{rng.randrange(40)}/items/{item}?currency=EUR&page={rng.randrange(9)}"
        request_id = f"{rng.getrandbits(64):016x}-{n:08x}"
        msg = external_auth_pb2.CheckRequest()
        attrs = msg.attributes
        attrs.source.address.socket_address.address = f"10.244.{rng.randrange(4)}.{rng.randrange(250)}"
        attrs.source.address.socket_address.port_value = rng.randrange(30000, 60000)
        attrs.destination.address.socket_address.address = "10.244.0.17"
        attrs.destination.address.socket_address.port_value = 8080
        http = attrs.request.http
        http.id = request_id
        http.method = rng.choice(["GET", "GET", "GET", "POST"])
        http.path = path
        http.host = f"{svc}.shop.svc.cluster.local"
        http.scheme = "http"
        http.protocol = "HTTP/1.1"
        http.size = 0
        http.headers.update(
            {
                ":authority": http.host,
                ":method": http.method,
                ":path": path,
                ":scheme": "http",
                "accept": "application/json",
                "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench/1.0",
                "x-forwarded-proto": "http",
                "x-request-id": request_id,
                "x-user": f"user-{rng.randrange(500)}",
                "x-envoy-expected-rq-timeout-ms": "15000",
            }
        )
        out.append(msg.SerializeToString())
    return out


def http_requests(grpc_requests: list[bytes]) -> list[bytes]:
    from envoy.service.auth.v3 import external_auth_pb2

    out = []
    for raw in grpc_requests:
        http = external_auth_pb2.CheckRequest.FromString(raw).attributes.request.http
        lines = [f"{http.method} {http.path} HTTP/1.1", f"host: {http.host}"]
        lines += [f"{k}: {v}" for k, v in http.headers.items() if not k.startswith(":")]
        lines.append("content-length: 0")
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    return out


# ---- servers (subprocesses) ----------------------------------------------------------------------


async def serve_bare(port_file: Path) -> None:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
    from google.rpc import status_pb2

    from remixer.serve import settle_heap

    class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
        async def Check(self, request: Any, context: Any) -> Any:
            return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0))

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AllowAll(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settle_heap()  # the same GC settings as remixer serve: the ratio compares the policy, not GC tuning
    port_file.write_text(json.dumps({"grpc": port}))  # noqa: ASYNC240 (once, before serving)
    await server.wait_for_termination()


async def serve_remixer(port_file: Path, policy_file: Path, cache_size: int, extra: dict[str, str]) -> None:
    import grpc
    from prometheus_client import CollectorRegistry

    from policy.app import build_part
    from policy.settings import PolicySettings
    from remixer.kit.parts import PartContext
    from remixer.serve import settle_heap

    class DiscardSink:
        def offer(self, records: Any) -> int:
            return len(records)

        async def put(self, records: Any) -> None:
            return None

    class Sinks:
        def sink(self, stream: str) -> DiscardSink:
            return DiscardSink()

    async def no_auth() -> None:
        return None

    data_dir = Path(tempfile.mkdtemp(prefix="remixer-bench-"))
    settings = PolicySettings(
        policy_files=[policy_file], http_address="127.0.0.1:0", cache_size=cache_size, cache_ttl=60.0, **extra
    )
    context = PartContext(
        data_dir=data_dir, registry=CollectorRegistry(), records=Sinks(), require_writer=no_auth
    )
    part = build_part(settings, context)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    part.register_grpc(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await part.start()
    settle_heap()  # as remixer serve does once its parts have started
    ports = {"grpc": port, "http": part.http_port}  # type: ignore[attr-defined]
    port_file.write_text(json.dumps(ports))  # noqa: ASYNC240 (once, before serving)
    await server.wait_for_termination()


# ---- client (subprocess) -------------------------------------------------------------------------


async def run_grpc_client(
    port: int, requests: list[bytes], duration: float, concurrency: int
) -> dict[str, Any]:
    import grpc

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(2)]
    calls = [ch.unary_unary("/envoy.service.auth.v3.Authorization/Check") for ch in channels]
    for call in calls:
        await call(requests[0])
    done = 0
    errors = 0
    stop_at = 0.0

    async def worker(w: int) -> None:
        nonlocal done, errors
        call = calls[w % len(calls)]
        i = w
        while time.perf_counter() < stop_at:
            try:
                await call(requests[i % len(requests)])
                done += 1
            except grpc.aio.AioRpcError:
                errors += 1
            i += concurrency

    stop_at = time.perf_counter() + duration
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    for ch in channels:
        await ch.close()
    return {"count": done, "errors": errors, "seconds": elapsed}


async def run_http_client(
    port: int, requests: list[bytes], duration: float, concurrency: int
) -> dict[str, Any]:
    done = 0
    errors = 0
    stop_at = time.perf_counter() + duration

    async def worker(w: int) -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = w
        while time.perf_counter() < stop_at:
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            cut = head.find(b"content-length: ")
            length = int(head[cut + 16 : head.find(b"\r\n", cut)])
            if length:
                await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 5"):
                errors += 1
            done += 1
            i += concurrency
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {"count": done, "errors": errors, "seconds": time.perf_counter() - started}


# ---- orchestration -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(workdir: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    port_file = workdir / f"{name}.ports"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", *args, "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f"{name}.log").open("wb"),
    )
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} server failed: {(workdir / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, json.loads(port_file.read_text())


def drive(
    server_pid: int, mode: str, port: int, requests_file: Path, args: argparse.Namespace
) -> dict[str, float]:
    before = cpu_seconds(server_pid)
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--client",
            mode,
            "--target-port",
            str(port),
            "--requests-file",
            str(requests_file),
            "--duration",
            str(args.duration),
            "--concurrency",
            str(args.concurrency),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    used = cpu_seconds(server_pid) - before
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rate = result["count"] / result["seconds"]
    return {"rate": rate, "cpu_us": used / max(1, result["count"]) * 1e6, "errors": result["errors"]}


def _shape(path: str, method: str = "GET") -> bytes:
    """One Envoy-shaped CheckRequest for h2load (which repeats a single body)."""
    from envoy.service.auth.v3 import external_auth_pb2

    msg = external_auth_pb2.CheckRequest.FromString(check_requests(1, seed=5)[0])
    http = msg.attributes.request.http
    http.path = http.headers[":path"] = path
    http.method = http.headers[":method"] = method
    return bytes(msg.SerializeToString())


def drive_h2load(
    server_pid: int, mode: str, port: int, request: bytes, args: argparse.Namespace
) -> dict[str, float]:
    """h2load (nghttp2, C) as the load client: cheap enough that the server, not the client, saturates."""
    if mode == "grpc":
        body = Path(tempfile.mkstemp(suffix=".grpc")[1])
        body.write_bytes(b"\x00" + len(request).to_bytes(4, "big") + request)
        target = f"http://127.0.0.1:{port}/envoy.service.auth.v3.Authorization/Check"
        extra = ["-c", "2", "-m", str(max(1, args.concurrency // 2)), "-d", str(body)]
        extra += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    else:
        head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        _, path, _ = head[0].split(" ")
        target = f"http://127.0.0.1:{port}{path}"
        extra = ["--h1", "-c", str(args.concurrency), "-m", "1"]
        for line in head[1:]:
            name, _, value = line.partition(": ")
            if name not in ("content-length",):
                extra += ["-H", f"{name}: {value}"]
    before = cpu_seconds(server_pid)
    out = subprocess.run(
        ["h2load", "-D", str(int(args.duration)), "-t", "1", *extra, target],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    used = cpu_seconds(server_pid) - before
    done = int(out.split("requests: ")[1].split(" done")[0].split(",")[-1].strip())
    failed = int(out.split(" succeeded, ")[1].split(" failed")[0])
    rate = float(out.split("finished in ")[1].split(", ")[1].split(" req/s")[0])
    return {"rate": rate, "cpu_us": used / max(1, done) * 1e6, "errors": failed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (HTTP: connections)")
    parser.add_argument("--distinct", type=int, default=20000, help="distinct requests in the no-cache run")
    parser.add_argument(
        "--load",
        choices=["auto", "h2load", "python"],
        default="auto",
        help="load client: h2load (nghttp2-client; one request shape per case, the server saturates) or a "
        "Python asyncio client process (varied requests; on 2 cores it often saturates first). auto: h2load "
        "when installed",
    )
    parser.add_argument("--serve", choices=["bare", "remixer"], help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--policy-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--setting", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=["grpc", "http"], help=argparse.SUPPRESS)
    parser.add_argument("--target-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--requests-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve == "bare":
        asyncio.run(serve_bare(args.port_file))
        return
    if args.serve == "remixer":
        extra = dict(item.split("=", 1) for item in args.setting)
        asyncio.run(serve_remixer(args.port_file, args.policy_file, args.cache_size, extra))
        return
    if args.client:
        requests = json.loads(args.requests_file.read_text())
        payload = [bytes.fromhex(r) for r in requests]
        runner = run_grpc_client if args.client == "grpc" else run_http_client
        print(json.dumps(asyncio.run(runner(args.target_port, payload, args.duration, args.concurrency))))
        return

    import yaml

    workdir = Path(tempfile.mkdtemp(prefix="remixer-bench-check-"))
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(bench_policy(), sort_keys=False))
    varied = check_requests(args.distinct, seed=1)
    # Cache-hit traffic: 50 request shapes repeating; request ids differ but no rule reads them.
    # Quota-governed requests (/search/) are left out: by design they are never answered from cache.
    shapes = [r for r in check_requests(200, seed=2) if b"/search/" not in r][:50]
    repeating = []
    for i in range(5000):
        from envoy.service.auth.v3 import external_auth_pb2

        msg = external_auth_pb2.CheckRequest.FromString(shapes[i % len(shapes)])
        msg.attributes.request.http.id = msg.attributes.request.http.headers["x-request-id"] = f"r{i:08x}"
        repeating.append(msg.SerializeToString())
    files = {}
    for name, reqs in (
        ("varied", varied),
        ("repeating", repeating),
        ("varied-http", http_requests(varied)),
        ("repeating-http", http_requests(repeating)),
    ):
        files[name] = workdir / f"{name}.json"
        files[name].write_text(json.dumps([r.hex() for r in reqs]))

    servers = {
        "bare": start_server(workdir, "bare", "bare"),
        "remixer": start_server(workdir, "remixer", "remixer", "--policy-file", str(policy_file)),
        "remixer-cached": start_server(
            workdir, "remixer-cached", "remixer", "--policy-file", str(policy_file), "--cache-size", "100000"
        ),
    }
    use_h2load = args.load == "h2load" or (args.load == "auto" and shutil.which("h2load") is not None)
    if use_h2load:
        # Its own process: the sliding window's log of admissions (hundreds of thousands of timestamps
        # per minute) would otherwise sit in the heap of the server measured on cache hits.
        servers["remixer-quota"] = start_server(
            workdir, "remixer-quota", "remixer", "--policy-file", str(policy_file), "--cache-size", "100000"
        )
    plain_shape = _shape("/catalog/v12/items/4711?currency=EUR&page=2")
    quota_shape = _shape("/search/?q=item7&page=1")
    shapes = {
        "varied": plain_shape,
        "repeating": plain_shape,
        "quota": quota_shape,
        "varied-http": http_requests([plain_shape])[0],
        "repeating-http": http_requests([plain_shape])[0],
    }
    cases = [
        ("bare grpc allow-all", "bare", "grpc", "grpc", "varied"),
        ("remixer grpc, 200 rules, no cache", "remixer", "grpc", "grpc", "varied"),
        ("bare grpc allow-all (repeating)", "bare", "grpc", "grpc", "repeating"),
        ("remixer grpc, cache hits", "remixer-cached", "grpc", "grpc", "repeating"),
        ("remixer http, 200 rules, no cache", "remixer", "http", "http", "varied-http"),
        ("remixer http, cache hits", "remixer-cached", "http", "http", "repeating-http"),
    ]
    if use_h2load:
        cases.insert(2, ("remixer grpc, quota rule (never cached)", "remixer-quota", "grpc", "grpc", "quota"))

    def measure(
        server: str, mode: str, port_key: str, reqs: str, settings: argparse.Namespace
    ) -> dict[str, float]:
        proc, ports = servers[server]
        if use_h2load:
            return drive_h2load(proc.pid, mode, ports[port_key], shapes[reqs], settings)
        return drive(proc.pid, mode, ports[port_key], files[reqs], settings)

    print(f"load client: {'h2load' if use_h2load else 'python asyncio subprocess'}", file=sys.stderr)
    results: dict[str, list[dict[str, float]]] = {c[0]: [] for c in cases}
    try:
        warmup = argparse.Namespace(duration=1, concurrency=8)
        for _, server, mode, port_key, reqs in cases:  # warm-up: pools, caches, the quota log
            measure(server, mode, port_key, reqs, warmup)
        for round_no in range(args.repeat):
            for name, server, mode, port_key, reqs in cases:
                results[name].append(measure(server, mode, port_key, reqs, args))
            print(f"round {round_no + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    # Paired per round: each remixer sample over the mean of the round's two bare samples (taken
    # minutes apart at most, where the medians above span the whole run's drift on a shared machine).
    def paired(name: str) -> float:
        bares = zip(results["bare grpc allow-all"], results["bare grpc allow-all (repeating)"], strict=True)
        return statistics.median(
            r["rate"] / ((a["rate"] + b["rate"]) / 2) for r, (a, b) in zip(results[name], bares, strict=True)
        )

    paired_plain = paired("remixer grpc, 200 rules, no cache")
    paired_cached = paired("remixer grpc, cache hits")
    if use_h2load:  # both bare cases send the same request: pool their samples
        pooled = results["bare grpc allow-all"] + results["bare grpc allow-all (repeating)"]
        results["bare grpc allow-all"] = results["bare grpc allow-all (repeating)"] = pooled
        del results["bare grpc allow-all (repeating)"]
        cases = [c for c in cases if c[0] != "bare grpc allow-all (repeating)"]
    print(f"{'case':42} {'req/s (median, min-max)':>28} {'server CPU µs/call':>20} errors")
    for name, *_ in cases:
        rates = [r["rate"] for r in results[name]]
        errors = sum(r["errors"] for r in results[name])
        print(
            f"{name:42} {median(name, 'rate'):>12.0f} ({min(rates):.0f}-{max(rates):.0f})"
            f"{median(name, 'cpu_us'):>18.0f} {errors:>8.0f}"
        )
    bare = median("bare grpc allow-all", "rate")
    plain = median("remixer grpc, 200 rules, no cache", "rate")
    cached = median("remixer grpc, cache hits", "rate")
    bare_rep = bare if use_h2load else median("bare grpc allow-all (repeating)", "rate")
    http_plain = median("remixer http, 200 rules, no cache", "rate")
    cpu_ratio = median("bare grpc allow-all", "cpu_us") / median(
        "remixer grpc, 200 rules, no cache", "cpu_us"
    )
    print(f"ratio remixer/bare (no cache): {plain / bare:.3f}   (server CPU per call: {cpu_ratio:.3f})")
    cached_cpu = median("bare grpc allow-all", "cpu_us") / median("remixer grpc, cache hits", "cpu_us")
    print(
        f"ratio remixer/bare (cache hits): {cached / bare_rep:.3f}   (server CPU per call: {cached_cpu:.3f})"
    )
    print(f"ratio http/grpc mode (no cache): {http_plain / plain:.2f}")
    print(
        f"paired per-round ratios (median of {args.repeat}): no cache {paired_plain:.3f}, "
        f"cache hits {paired_cached:.3f}"
    )

    def best(name: str) -> float:  # least-disturbed sample: other load on a shared machine only adds CPU
        return min(r["cpu_us"] for r in results[name])

    floors = {
        "bare": best("bare grpc allow-all"),
        "no cache": best("remixer grpc, 200 rules, no cache"),
        "cache hits": best("remixer grpc, cache hits"),
        "http": best("remixer http, 200 rules, no cache"),
    }
    print("best-sample server CPU µs/call: " + ", ".join(f"{k} {v:.0f}" for k, v in floors.items()))
    print(f"check_throughput: {plain:.0f} (req/s) ratio: {plain / bare:.3f}")


if __name__ == "__main__":
    main()
