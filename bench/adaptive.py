"""Benchmark: adaptive limits against an overloaded upstream, four ways side by side in one run.

An upstream of fixed capacity (WORKERS slots, each request holds one for SERVICE_MS: latency rises as the
queue grows, and past QUEUE_BOUND waiting requests it answers 503 at once) sits behind a real Envoy.
An open-loop load (constant arrival rate per level, not closed-loop) ramps 0.5x -> 1x -> 2x -> 3x -> 2x ->
1x -> 0.5x of the measured capacity, split between two callers: `high` (25% of the load, priority 0) and
`low` (75%), each arriving on its own Envoy listener whose route tags the caller (ext_authz context
extensions: set by the operator, not by the request). Compared in the same run, one after the other:

  (a) no limit            Envoy straight to the upstream
  (b) static limit        ext_authz to remixer, a token bucket at the measured capacity
  (c) Envoy adaptive      Envoy's adaptive_concurrency filter (gradient controller)
  (d) remixer adaptive    ext_authz to remixer, an adaptive limit (p99 and 5xx ratio from Envoy's access
                          logs, read in process by the telemetry part), `high` served first

Printed per scenario: goodput (2xx/s over the ramp), p50/p99 of admitted requests (those the upstream
answered) over the whole ramp and during overload (every request sent during a level above 1x, the
first moments after each step included; then per overload level), each caller's success ratio during
overload, and the settling time after each step: as in control theory, the time from the step until
the p99 of admitted, in 1 s bins, stays within a band around the value it settles to (the level's last
5 s; the band is +-25% of that value, at least +-50% of the setpoint); the level's length when even
its last second lies outside. Levels last 15 s so that a settling time of 10 s can be seen at all.
Loopback only; with `--trace`, remixer adaptive's timeline per second.

    .venv/bin/python bench/adaptive.py [--level-seconds 15]

The machine is shared and noisy (2 cores, several users); the upstream's capacity is made of sleeps, not
CPU, so it holds under noise, but Envoy, remixer and this load generator share the cores.
Last line: `adaptive: p99_over_setpoint=X goodput_vs_envoy=Y priority_success=Z settle_s=W`
(for (d): p99 of admitted during overload / setpoint, goodput / (c)'s, the high caller's success during
overload, the longest settle time over the steps).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from remixer.kit import envoy
from remixer.kit.serveproc import ServeProcess

WORKERS = 4
SERVICE_MS = 40.0
QUEUE_BOUND = 40
SETPOINT_MS = 150.0
HOST = "capacity.bench.svc.cluster.local"
# Envoy dressed as the capacity workload's istio-proxy (node metadata, inbound cluster name, as
# istio-proxy 1.22-1.28 sends them): telemetry then labels its requests reporter=destination,
# destination_service=capacity.bench.svc.cluster.local, as it would in a mesh.
INBOUND = "inbound|8080||"
SIDECAR_NODE = {
    "id": "sidecar~10.0.0.1~capacity-abc.bench~bench.svc.cluster.local",
    "cluster": "capacity.bench",
    "metadata": {
        "NAME": "capacity-abc",
        "NAMESPACE": "bench",
        "WORKLOAD_NAME": "capacity",
        "CLUSTER_ID": "Kubernetes",
        "MESH_ID": "cluster.local",
        "LABELS": {
            "app": "capacity",
            "version": "v1",
            "service.istio.io/canonical-name": "capacity",
            "service.istio.io/canonical-revision": "v1",
        },
    },
}
LEVELS = (0.5, 1.0, 2.0, 3.0, 2.0, 1.0, 0.5)
HIGH_SHARE = 0.25
REQUEST_TIMEOUT = 5.0
SETTLE_FINAL = 5.0  # seconds at the end of a level whose p99 is the value a step settles to
# The settling band is at least this fraction of the setpoint wide, each side: one bin's p99 is the
# tail of ~100 requests, which a scheduling pause on a shared machine moves by 50-100 ms.
SETTLE_TOLERANCE = 0.5


# ---- the upstream: fixed capacity, queueing, a bound -------------------------------------------------


def _serve_upstream(port: int, ready: Any) -> None:
    asyncio.run(_upstream(port, ready))


async def _upstream(port: int, ready: Any) -> None:
    slots = asyncio.Semaphore(WORKERS)
    waiting = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal waiting
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if waiting >= QUEUE_BOUND:
                    status = b"503 Service Unavailable"
                else:
                    waiting += 1
                    try:
                        await slots.acquire()
                    finally:
                        waiting -= 1
                    try:
                        await asyncio.sleep(SERVICE_MS / 1000)
                    finally:
                        slots.release()
                    status = b"200 OK"
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\nx-upstream: 1\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    ready.set()
    async with server:
        await server.serve_forever()


# ---- the open-loop load ------------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    caller: str
    at: float  # scheduled send time, seconds from the start of the ramp
    status: int  # 0: no answer in time
    latency: float  # from the scheduled send time (no coordinated omission)
    admitted: bool  # the upstream answered it (x-upstream)


class Pool:
    """Keep-alive HTTP/1.1 connections to one listener; a new one whenever none is idle."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, request: bytes) -> tuple[int, bool]:
        conn = self.idle.pop() if self.idle else await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = conn
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length, upstream, close = 0, False, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-upstream":
                    upstream = True
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self.idle.append(conn)
        return status, upstream


async def ramp(
    ports: dict[str, int],
    capacity: float,
    level_seconds: float,
    levels: tuple[float, ...],
    watch: str | None = None,
    trace: list[tuple[float, dict[str, Any]]] | None = None,
) -> tuple[list[Result], list[float]]:
    """Drive the ramp; the results and the start time of each level (seconds from the start).
    `watch`: an admin URL whose /v1/adaptive-state is sampled into `trace` every 0.5 s."""
    loop = asyncio.get_running_loop()
    request = f"GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode()
    results: list[Result] = []
    pools = {caller: Pool(port) for caller, port in ports.items()}
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.2
    steps = [i * level_seconds for i in range(len(levels))]
    end = len(levels) * level_seconds

    async def one(caller: str, at: float) -> None:
        try:
            # asyncio.timeout, not wait_for: no second task per request for the generator to run.
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status, upstream = await pools[caller].get(request)
        except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            status, upstream = 0, False
        results.append(Result(caller, at, status, loop.time() - start - at, upstream))

    async def arrivals(caller: str, share: float) -> None:
        at = 0.0
        while at < end:
            rate = levels[min(int(at // level_seconds), len(levels) - 1)] * capacity * share
            at += 1.0 / rate
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(caller, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def sample() -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            while loop.time() < start + end:
                with contextlib.suppress(httpx.HTTPError, IndexError, ValueError):
                    state = (await client.get(f"{watch}/v1/adaptive-state")).json()[0]
                    if trace is not None:
                        trace.append((loop.time() - start, state))
                await asyncio.sleep(0.5)

    jobs = [arrivals("high", HIGH_SHARE), arrivals("low", 1 - HIGH_SHARE)]
    if watch is not None:
        jobs.append(sample())
    await asyncio.gather(*jobs)
    if tasks:
        await asyncio.wait(set(tasks), timeout=REQUEST_TIMEOUT + 1)
    for pool in pools.values():
        for _, writer in pool.idle:
            writer.close()
    return results, steps


async def measure_capacity(port: int, seconds: float = 3.0) -> float:
    """Closed loop with twice the upstream's slots in flight: completed 2xx per second."""
    pool = Pool(port)
    request = f"GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode()
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            status, _ = await pool.get(request)
            done += status == 200

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(WORKERS * 2)))
    return done / (time.monotonic() - started)


# ---- Envoy, one bootstrap per scenario ---------------------------------------------------------------


def _route_extra(context: dict[str, str]) -> dict[str, Any]:
    """Per-route ext_authz context extensions: the caller as the operator tags it, not as a request says."""
    if not context:
        return {}
    return {
        "typed_per_filter_config": {
            "envoy.filters.http.ext_authz": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": {"context_extensions": context},
            }
        }
    }


def adaptive_concurrency_filter() -> dict[str, Any]:
    """Envoy's gradient controller with its documented defaults, sampling every 100 ms."""
    return {
        "name": "envoy.filters.http.adaptive_concurrency",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http."
            "adaptive_concurrency.v3.AdaptiveConcurrency",
            "gradient_controller_config": {
                "sample_aggregate_percentile": {"value": 50},
                "concurrency_limit_params": {"concurrency_update_interval": "0.1s"},
                "min_rtt_calc_params": {
                    "interval": "30s",
                    "request_count": 50,
                    "jitter": {"value": 10},
                    "buffer": {"value": 25},
                    "min_concurrency": 3,
                },
            },
        },
    }


def envoy_bootstrap(scenario: str, ports: dict[str, int], upstream: int, remixer_grpc: int) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    access_log: list[Any] = []
    tags = {"static": "static", "remixer": "adaptive"}
    if scenario in tags:
        filters = [envoy.ext_authz_grpc_filter("remixer_policy", timeout="0.5s")]
    if scenario == "envoy":
        filters = [adaptive_concurrency_filter()]
    if scenario == "remixer":
        # Istio's name for an inbound listener's HTTP access logger: telemetry reads the side from it.
        access_log = [
            envoy.http_grpc_access_log("remixer_telemetry", log_name="remixer_http_inbound", flush="0.1s")
        ]
    upstream_cluster = envoy.http_cluster(INBOUND, "127.0.0.1", upstream)
    # Envoy's default circuit breakers (1024 pending) must not be the limit being measured.
    upstream_cluster["circuit_breakers"] = {
        "thresholds": [{"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}]
    }
    listeners = [
        envoy.http_listener(
            f"{caller}_in",
            ports[caller],
            route_cluster=INBOUND,
            http_filters=filters,
            access_log=access_log,
            stat_prefix=f"{caller}_in",
            route_extra=_route_extra(
                {"caller": caller, "scenario": tags[scenario]} if scenario in tags else {}
            ),
        )
        for caller in ("high", "low")
    ]
    return envoy.bootstrap(
        admin_port=ports["admin"],
        listeners=listeners,
        clusters=[
            upstream_cluster,
            envoy.grpc_cluster("remixer_policy", "127.0.0.1", remixer_grpc),
            envoy.grpc_cluster("remixer_telemetry", "127.0.0.1", remixer_grpc),
        ],
        node=SIDECAR_NODE,
    )


# ---- remixer -----------------------------------------------------------------------------------------


def policy_document(capacity: float) -> dict[str, Any]:
    return {
        "limits": [
            {
                "name": "static-capacity",
                "requests": max(1, round(capacity)),
                "unit": "second",
                "algorithm": "token_bucket",
            }
        ],
        "rules": [
            {
                "id": "static",
                "action": "rate_limit",
                "limit": "static-capacity",
                "match": {"context.scenario": {"exact": "static"}},
            }
        ],
        "adaptive": [
            {
                "name": "bench",
                "target": {"service": HOST, "match": {"context.scenario": {"exact": "adaptive"}}},
                "signals": [
                    {"signal": "p99_latency_ms", "setpoint": SETPOINT_MS},
                    {"signal": "error_ratio", "setpoint": 0.02},
                ],
                "min_rate": round(capacity * 0.1, 1),
                "max_rate": round(capacity * 4, 1),
                # Signals read in process are fresh every tick: a 0.25 s tick is cheap and reacts
                # within the time this upstream's queue takes to fill (40 requests at 1-2x capacity).
                # 10% a tick: 20% (the default) at four ticks a second overshoots both ways. No
                # derivative: on a histogram quantile (Istio's buckets 50/100/250 ms around this
                # setpoint) it only amplifies the jump from one bucket to the next. Headroom 1.1: while
                # healthy the limit rises to headroom x the offered load, and at a step up that much is
                # admitted until the signal answers (at 1x here, 1.3x filled the queue for ~3 s).
                "interval": 0.25,
                "max_step": 0.1,
                "gains": {"kp": 0.4, "ki": 0.1, "kd": 0.0},
                "headroom": 1.1,
                "caller": "context.caller",
                "callers": [{"caller": "high", "priority": 0, "share": 1.0}],
            }
        ],
    }


def start_remixer(workdir: Path, capacity: float) -> tuple[ServeProcess, int]:
    grpc_port, admin_port = envoy.free_port(), envoy.free_port()
    policy = workdir / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_document(capacity), sort_keys=False))
    config = {
        "server": {
            "parts": ["policy", "telemetry", "admin", "adaptive"],
            "grpc_address": f"127.0.0.1:{grpc_port}",
            "admin_address": f"127.0.0.1:{admin_port}",
            "data_dir": str(workdir / "data"),
            "drain_seconds": 1,
            "log_level": "warning",
        },
        "policy": {"policy_files": [str(policy)], "http_enabled": False, "decision_log_sample": 0.0},
        "telemetry": {
            "export_records": False,
            "call_edges": {"enabled": False},
        },
        "adaptive": {"resolution": 0.05},
    }
    path = workdir / "remixer.yaml"
    path.write_text(yaml.safe_dump(config))
    server = ServeProcess(path, f"http://127.0.0.1:{admin_port}", workdir / "remixer.log")
    server.start(timeout=60)
    return server, grpc_port


# ---- figures -----------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Figures:
    goodput: float
    p50: float
    p99: float
    p99_overload: float
    p99_levels: list[float]  # p99 of admitted during each overload level
    high_success: float
    low_success: float
    settle: list[float] = field(default_factory=list)


def _admitted_ms(results: list[Result], start: float, stop: float) -> list[float]:
    """Latencies (ms) of the admitted requests sent in [start, stop)."""
    return [r.latency * 1000 for r in results if r.admitted and start <= r.at < stop]


def settle_time(results: list[Result], step: float, stop: float, tolerance: float) -> float:
    """Settling time as control theory has it, of the p99 of admitted requests after a step: from the
    step until every later 1 s bin of the level lies within a band around the final value (the p99 of
    the level's last SETTLE_FINAL seconds), the band being the wider of 25% of that value and
    `tolerance` ms (one bin's p99 is the tail of ~100 requests: noisy). The level's length if even
    its last bin lies outside (never settled)."""
    final = _pct(_admitted_ms(results, stop - SETTLE_FINAL, stop), 0.99)
    band = max(0.25 * final, tolerance)
    inside: list[tuple[float, bool]] = []
    t = step
    while t < stop - 1e-9:
        lat = _admitted_ms(results, t, min(t + 1, stop))
        inside.append((t, not lat or abs(_pct(lat, 0.99) - final) <= band))
        t += 1
    for j in range(len(inside)):
        if all(ok for _, ok in inside[j:]):
            return inside[j][0] - step
    return stop - step


def figures(
    results: list[Result], steps: list[float], level_seconds: float, levels: tuple[float, ...]
) -> Figures:
    end = len(levels) * level_seconds
    overload = [(s, s + level_seconds) for s, lv in zip(steps, levels, strict=True) if lv > 1.0]

    def in_overload(at: float) -> bool:
        return any(a <= at < b for a, b in overload)

    admitted = [r.latency * 1000 for r in results if r.admitted]
    admitted_over = [r.latency * 1000 for r in results if r.admitted and in_overload(r.at)]

    def success(caller: str) -> float:
        mine = [r for r in results if r.caller == caller and in_overload(r.at)]
        return sum(r.status == 200 for r in mine) / len(mine) if mine else float("nan")

    bounds = [*steps, end]
    return Figures(
        goodput=sum(r.status == 200 for r in results) / end,
        p50=_pct(admitted, 0.5),
        p99=_pct(admitted, 0.99),
        p99_overload=_pct(admitted_over, 0.99),
        p99_levels=[_pct(_admitted_ms(results, a, b), 0.99) for a, b in overload],
        high_success=success("high"),
        low_success=success("low"),
        settle=[
            settle_time(results, bounds[i], bounds[i + 1], SETTLE_TOLERANCE * SETPOINT_MS)
            for i in range(1, len(steps))
        ],
    )


# ---- the run -----------------------------------------------------------------------------------------

SCENARIOS = (
    ("none", "(a) no limit"),
    ("static", "(b) static limit"),
    ("envoy", "(c) Envoy adaptive"),
    ("remixer", "(d) remixer adaptive"),
)


def run_scenario(
    scenario: str,
    workdir: Path,
    upstream: int,
    remixer_grpc: int,
    capacity: float,
    level_seconds: float,
    levels: tuple[float, ...],
    watch: str | None = None,
    trace: list[tuple[float, dict[str, Any]]] | None = None,
) -> tuple[list[Result], list[float]]:
    ports = {"high": envoy.free_port(), "low": envoy.free_port(), "admin": envoy.free_port()}
    boot = envoy_bootstrap(scenario, ports, upstream, remixer_grpc)
    proc = envoy.EnvoyProcess(boot, workdir=workdir / f"envoy-{scenario}", concurrency=1)
    with proc:
        return asyncio.run(
            ramp({"high": ports["high"], "low": ports["low"]}, capacity, level_seconds, levels, watch, trace)
        )


def print_trace(results: list[Result], trace: list[tuple[float, dict[str, Any]]], seconds: float) -> None:
    """Per second: what arrived and how it ended, beside what the controller had set."""
    print("   t  sent  2xx  429  503  lost  p99 ms  limit  high  unknown  measured  mode")
    t = 0.0
    while t < seconds:
        window = [r for r in results if t <= r.at < t + 1]
        lat = [r.latency * 1000 for r in window if r.admitted]
        states = [s for at, s in trace if t <= at < t + 1]
        s = states[-1] if states else {}
        measured = s.get("step", {}).get("measured")
        print(
            f"{t:4.0f} {len(window):5d} {sum(r.status == 200 for r in window):4d} "
            f"{sum(r.status == 429 for r in window):4d} {sum(r.status == 503 for r in window):4d} "
            f"{sum(r.status == 0 for r in window):5d} {_pct(lat, 0.99):7.1f} {s.get('limit', 0):6.1f} "
            f"{s.get('callers', {}).get('high', 0):5.1f} {s.get('unknown', 0):8.1f} "
            f"{measured if measured is not None else float('nan'):9.2f}  {s.get('mode', '-')}"
        )
        t += 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--level-seconds", type=float, default=15.0, help="seconds per load level (15: a 10 s settle shows)"
    )
    parser.add_argument(
        "--only", default="none,static,envoy,remixer", help="scenarios to run (comma-separated; default all)"
    )
    parser.add_argument("--trace", action="store_true", help="print remixer adaptive's timeline, per second")
    args = parser.parse_args()
    level_seconds = args.level_seconds
    wanted = set(args.only.split(","))
    chosen = [(name, title) for name, title in SCENARIOS if name in wanted]
    workdir = Path(tempfile.mkdtemp(prefix="remixer-bench-adaptive-"))
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    upstream_port = envoy.free_port()
    upstream = ctx.Process(target=_serve_upstream, args=(upstream_port, ready), daemon=True)
    upstream.start()
    remixer: ServeProcess | None = None
    try:
        if not ready.wait(20):
            raise RuntimeError("the upstream did not start")
        # Capacity through Envoy alone (closed loop), as an operator would measure it for a static limit.
        ports = {"high": envoy.free_port(), "low": envoy.free_port(), "admin": envoy.free_port()}
        with envoy.EnvoyProcess(
            envoy_bootstrap("none", ports, upstream_port, 1), workdir=workdir / "envoy-cap"
        ):
            capacity = asyncio.run(measure_capacity(ports["high"]))
        print(
            f"upstream: {WORKERS} workers x {SERVICE_MS:g} ms, queue bound {QUEUE_BOUND}; "
            f"measured capacity {capacity:.1f} req/s (designed {WORKERS * 1000 / SERVICE_MS:.0f}); "
            f"setpoint p99 {SETPOINT_MS:g} ms; "
            f"levels {'/'.join(f'{lv:g}x' for lv in LEVELS)} x {level_seconds:g} s; "
            f"high caller {HIGH_SHARE:.0%} of the load"
        )
        remixer, grpc_port = start_remixer(workdir, capacity)
        table: dict[str, Figures] = {}
        for scenario, title in chosen:
            trace: list[tuple[float, dict[str, Any]]] = []
            watch = remixer.admin_url if scenario == "remixer" and args.trace else None
            load_before = os.getloadavg()[0]
            results, steps = run_scenario(
                scenario, workdir, upstream_port, grpc_port, capacity, level_seconds, LEVELS, watch, trace
            )
            if watch is not None:
                print_trace(results, trace, level_seconds * len(LEVELS))
            table[scenario] = figures(results, steps, level_seconds, LEVELS)
            f = table[scenario]
            print(
                f"{title:22s} goodput {f.goodput:6.1f}/s  p50 {f.p50:6.1f} ms  p99 {f.p99:7.1f} ms  "
                f"p99 overload {f.p99_overload:7.1f} ms "
                f"({' '.join(f'{p:.0f}' for p in f.p99_levels)})  "
                f"high ok {f.high_success:6.1%}  low ok {f.low_success:6.1%}  "
                f"settle {' '.join(f'{s:.1f}' for s in f.settle)} s  "
                # The machine's 1-minute load average before and after: other work starves all of it.
                f"load {load_before:.1f}-{os.getloadavg()[0]:.1f}",
                flush=True,
            )
        state = httpx.get(remixer.admin_url + "/v1/adaptive-state", timeout=5).json()
        print(
            f"remixer adaptive state after the run: limit {state[0]['limit']:.1f}/s, mode {state[0]['mode']}"
        )
    finally:
        if remixer is not None:
            remixer.stop()
        upstream.terminate()
        upstream.join(5)
    print()
    print(
        f"{'':22s} {'goodput/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99 over':>9s} "
        f"{'high ok':>8s} {'low ok':>8s} {'settle s':>9s}"
    )
    for scenario, title in chosen:
        f = table[scenario]
        print(
            f"{title:22s} {f.goodput:10.1f} {f.p50:8.1f} {f.p99:8.1f} {f.p99_overload:9.1f} "
            f"{f.high_success:8.1%} {f.low_success:8.1%} {max(f.settle):9.1f}"
        )
    print(
        "(shared 2-core machine: Envoy, remixer and this load generator compete with other work; "
        "the upstream's capacity is sleeps, so it holds, but latencies carry the noise)"
    )
    if "remixer" not in table or "envoy" not in table:
        return 0
    d, c = table["remixer"], table["envoy"]
    print(
        f"adaptive: p99_over_setpoint={d.p99_overload / SETPOINT_MS:.2f} "
        f"goodput_vs_envoy={d.goodput / c.goodput:.2f} "
        f"priority_success={d.high_success:.3f} settle_s={max(d.settle):.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
