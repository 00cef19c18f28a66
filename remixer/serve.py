"""`remixer serve`: one asyncio process hosting the gRPC server (ext_authz Check, StreamAccessLogs,
health, reflection), the parts' own listeners, and the admin app.

The composition root: the only module that picks concrete implementations for the parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import math
import multiprocessing
import os
import platform
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvicorn
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_health.v1.health_pb2_grpc import add_HealthServicer_to_server
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Gauge
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from remixer.kit import admin, logs, workers
from remixer.kit.parts import Part, PartContext, Readiness
from remixer.kit.shipping import build_record_sinks, quiet_abandoned_sends
from remixer.settings import ServerSettings, Settings, parse_address

log = logging.getLogger("remixer.serve")


class PortInUse(OSError):
    """A listen address is taken by another process; remixer refuses to share it silently."""


class _QuietServer(uvicorn.Server):
    # remixer owns SIGTERM/SIGINT; uvicorn must not install its own handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def admin_protocol(server: ServerSettings) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with what it lacks for slow clients: a request head must arrive
    within admin_header_timeout_s of its first byte (or of the connection, for a silent client) and
    stay under admin_max_head_bytes. Idle keep-alive connections close after admin_idle_timeout_s
    (uvicorn's timeout_keep_alive), and beyond admin_max_connections uvicorn answers 503."""
    header_timeout = server.admin_header_timeout_s
    max_head = server.admin_max_head_bytes

    class AdminHttpProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _in_head = False

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Counted after parsing, and only while the head is still incomplete: a body that arrives
            # in the same segment as its head (one write of a large PUT) is not part of the head.
            if self._in_head or self._head_timer is not None:
                self._head_bytes += len(data)
                if self._head_bytes > max_head and not self.transport.is_closing():
                    self._disarm()
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._arm(header_timeout)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._disarm()
            super().on_headers_complete()

    return AdminHttpProtocol


def bind_tcp(address: str, *, setting: str, reuse_port: bool = False) -> socket.socket:
    """A listening socket on `address`, without SO_REUSEPORT unless asked (workers)."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(exc.errno, f"{setting} {address} is already in use by another process") from None
        raise OSError(exc.errno, f"{setting} {address} cannot be bound: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def listen_addresses(settings: Settings) -> dict[str, str]:
    """Every address this configuration listens on, by the setting that names it."""
    parts = settings.server.parts
    addresses: dict[str, str] = {}
    if "policy" in parts or "telemetry" in parts:
        addresses["server.grpc_address"] = settings.server.grpc_address
    if "policy" in parts and settings.policy.http_enabled:
        addresses["policy.http_address"] = settings.policy.http_address
    if "admin" in parts:
        addresses["server.admin_address"] = settings.server.admin_address
    return addresses


def check_ports_free(settings: Settings) -> None:
    for setting, address in listen_addresses(settings).items():
        if parse_address(address)[1] != 0:
            bind_tcp(address, setting=setting).close()


def build_parts(settings: Settings, context: PartContext) -> list[Part]:
    parts: list[Part] = []
    if "policy" in settings.server.parts:
        from policy.app import build_part as build_policy

        parts.append(build_policy(settings.policy, context))
    if "telemetry" in settings.server.parts:
        from telemetry.app import build_part as build_telemetry

        parts.append(build_telemetry(settings.telemetry, context))
    if "adaptive" in settings.server.parts:
        parts.append(_adaptive_part(settings, context, parts))
    return parts


def _adaptive_part(settings: Settings, context: PartContext, parts: list[Part]) -> Part:
    """The controller beside the policy part; its signals from telemetry in process, else Prometheus."""
    from controller.adapters.prometheus import PrometheusSource
    from policy.adaptive import SignalSource
    from policy.adaptive_app import build_part as build_adaptive
    from policy.app import PolicyPart
    from remixer.adaptive_signals import PrometheusSignals, TelemetrySignals

    adaptive = settings.adaptive
    policy = next(p for p in parts if isinstance(p, PolicyPart))
    aggregates = next((getattr(p, "aggregates", None) for p in parts if p.name == "telemetry"), None)
    source: SignalSource
    if aggregates is not None:
        source = TelemetrySignals(aggregates, reporter=adaptive.reporter)
    else:
        prometheus = PrometheusSource(adaptive.prometheus_url, timeout=adaptive.prometheus_timeout, retries=0)
        source = PrometheusSignals(prometheus, reporter=adaptive.reporter, window=adaptive.prometheus_window)
    return build_adaptive(adaptive, context, policy, source)


def _grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    tls = settings.server.grpc_tls
    if tls.cert_file is None and tls.key_file is None:
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("server.grpc_tls needs both cert_file and key_file")
    ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


@dataclass
class _Running:
    """What one worker has started, so shutdown can undo it in order."""

    grpc_server: grpc.aio.Server | None = None
    health: health_aio.HealthServicer | None = None
    admin_server: uvicorn.Server | None = None
    admin_task: asyncio.Task[None] | None = None
    parts: list[Part] = field(default_factory=list)
    draining: bool = False


async def run_worker(
    settings: Settings, *, worker_index: int = 0, reuse_port: bool = False, started: Any = None
) -> int:
    """Serve until SIGTERM/SIGINT. `started` (an Event) is set once the start succeeded or failed."""
    server = settings.server
    data_dir = server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    Gauge("remixer_up", "1 while this remixer worker serves.", ["worker"], registry=registry).labels(
        str(worker_index)
    ).set(1)
    records = build_record_sinks(
        settings.shipping, data_dir=data_dir, registry=registry, worker_index=worker_index
    )
    token = admin.ensure_admin_token(
        server.admin_token.get_secret_value() if server.admin_token else None, data_dir
    )
    context = PartContext(
        data_dir=data_dir,
        registry=registry,
        records=records,
        require_writer=admin.token_guard(token),
        reuse_port=reuse_port,
        worker_index=worker_index,
    )
    running = _Running(parts=build_parts(settings, context))
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        # SIGTERM (an orchestrator) hands over during the drain; SIGINT (Ctrl-C) or a second signal
        # skips the hand-over and stops at once, still persisting every record.
        if sig == signal.SIGINT or stop.is_set():
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.set_exception_handler(quiet_abandoned_sends)

    try:
        await _start(settings, running, registry, worker_index=worker_index, reuse_port=reuse_port)
    except (OSError, ValueError, RuntimeError) as exc:
        log.error("remixer cannot start: %s", exc)
        await _shutdown(settings, running, records)
        return 1
    finally:
        if started is not None:
            started.set()
    records.start()
    metrics_server = (
        await workers.serve_metrics(registry, workers.metrics_socket(data_dir, worker_index))
        if worker_index > 0
        else None
    )
    settle_heap()
    trimmer = asyncio.create_task(trim_heap_every(server.memory_trim_interval_s), name="remixer-heap-trim")
    log.info(
        "remixer serving worker=%d %s",
        worker_index,
        " ".join(f"{k}={v}" for k, v in listen_addresses(settings).items()),
    )
    await stop.wait()
    log.info(
        "remixer draining worker=%d: reporting NOT_SERVING and serving on for %.1fs, then %.1fs for "
        "in-flight work",
        worker_index,
        0.0 if hurry.is_set() else server.drain_seconds,
        server.stop_grace_s,
    )
    await _shutdown(settings, running, records, hurry=hurry)
    if metrics_server is not None:
        metrics_server.close()
    trimmer.cancel()
    log.info("remixer stopped worker=%d", worker_index)
    return 0


# A Check or an access-log batch allocates hundreds of short-lived containers; at Python's default
# gen0 threshold (700) the cyclic GC runs every few calls, measurably on the hot paths (bench/).
GC_GEN0_THRESHOLD = 50_000
# glibc returns freed memory at the top of its heap to the kernel once it exceeds 128 KiB, so a
# pattern like "encode a few hundred records, ship, free" faults the same pages back in every
# time (measured: ~2 page faults per Check, 5x the cost of orjson.dumps itself). Keep it instead:
# the process's footprint is its high-water mark plus at most this much.
MALLOC_TRIM_THRESHOLD = 64 << 20
MALLOC_TOP_PAD = 8 << 20
MALLOC_MMAP_THRESHOLD = 4 << 20  # fixed: buffers up to a Kafka batch come from the heap, not mmap


def settle_heap() -> None:
    """Once the parts have started: freeze what startup built (imports, parts, policy snapshots live
    for the process, so full collections need not rescan them), collect young objects less often,
    and stop glibc from handing freed memory back to the kernel between batches.
    Process-wide, so done once here rather than by one part for all."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    _keep_freed_memory()


def _glibc() -> Any:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    return libc


def _keep_freed_memory() -> None:
    libc = _glibc()
    if libc is None:
        return
    for option, value in ((-1, MALLOC_TRIM_THRESHOLD), (-2, MALLOC_TOP_PAD), (-3, MALLOC_MMAP_THRESHOLD)):
        libc.mallopt(option, value)  # M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD


async def trim_heap_every(interval: float) -> None:
    """Hand memory freed after a burst (slow clients, a huge batch) back to the kernel now and then:
    the retention above keeps it between batches, which is right for steady load but would keep a
    burst's high-water mark for the life of the process. One malloc_trim every `interval` seconds
    costs the hot path a few page faults once, not per call."""
    libc = _glibc()
    if libc is None or interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        libc.malloc_trim(0)


async def _start(
    settings: Settings, running: _Running, registry: CollectorRegistry, *, worker_index: int, reuse_port: bool
) -> None:
    server = settings.server
    if running.parts:
        grpc_server = grpc.aio.server(
            options=[
                # grpc shares ports silently by default; a second remixer must fail loudly instead.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.max_receive_message_length", server.grpc_max_receive_bytes),
                ("grpc.max_concurrent_streams", 1024),
            ]
        )
        names: list[str] = []
        for part in running.parts:
            names.extend(part.register_grpc(grpc_server))
        health = health_aio.HealthServicer()
        add_HealthServicer_to_server(health, grpc_server)
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            grpc_server,
        )
        credentials = _grpc_credentials(settings)
        host, port = parse_address(server.grpc_address)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = (
                grpc_server.add_secure_port(target, credentials)
                if credentials
                else grpc_server.add_insecure_port(target)
            )
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise PortInUse(errno.EADDRINUSE, f"server.grpc_address {server.grpc_address} is already in use")
        running.grpc_server, running.health = grpc_server, health
        await grpc_server.start()
        for name in ["", *names]:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    for part in running.parts:
        await part.start()
    if "admin" in server.parts and worker_index == 0:
        sock = bind_tcp(server.admin_address, setting="server.admin_address", reuse_port=False)
        routers: list[Any] = [r for p in running.parts for r in p.admin_routers()]
        # Imported here: only the admin worker serves the controller's graph API, and its
        # dependencies (networkx, the Prometheus client) need not load in every worker.
        from controller.app import admin_router

        routers.append(admin_router(settings.controller))
        app = admin.build_admin_app(
            registry=registry,
            routers=routers,
            readiness=lambda: (
                {p.name: p.readiness() for p in running.parts}
                | {"server": Readiness(not running.draining, "draining" if running.draining else "")}
            ),
            alive=lambda: not running.draining,
            max_body_bytes=server.admin_max_body_bytes,
            exposition=(
                workers.all_workers_metrics(registry, server.data_dir, server.workers)
                if server.workers > 1
                else None
            ),
        )
        config = uvicorn.Config(
            app,
            http=admin_protocol(server),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=math.ceil(server.admin_idle_timeout_s),
            limit_concurrency=server.admin_max_connections,
        )
        running.admin_server = _QuietServer(config)
        running.admin_task = asyncio.create_task(running.admin_server.serve(sockets=[sock]))


async def _shutdown(
    settings: Settings, running: _Running, records: Any, *, hurry: asyncio.Event | None = None
) -> None:
    """The drain: NOT_SERVING on gRPC health and /readyz at once, while every listener keeps answering
    for drain_seconds (Envoys, told by health checks or by their endpoints' removal, move to other
    replicas meanwhile; access-log streams are handed over). Then stop, with stop_grace_s for what is
    in flight, and persist every record read (Kafka or the spool)."""
    running.draining = True
    server = settings.server
    if running.health is not None:
        await running.health.enter_graceful_shutdown()
    for part in running.parts:
        part.hand_over()
    if hurry is not None and running.grpc_server is not None and server.drain_seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), server.drain_seconds)
    grace = server.stop_grace_s
    stops = [p.stop(grace) for p in running.parts]
    if running.grpc_server is not None:
        stops.append(running.grpc_server.stop(grace))
    results = await asyncio.gather(*stops, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            log.error("error while draining: %r", result)
    close = getattr(records, "close", None)
    if close is not None:
        await close()
    if running.admin_server is not None and running.admin_task is not None:
        running.admin_server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await running.admin_task


def _worker_process(settings: Settings, index: int, started: Any) -> None:
    logs.configure(settings.server.log_level, settings.server.log_format)
    sys.exit(asyncio.run(run_worker(settings, worker_index=index, reuse_port=True, started=started)))


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain, 1 when the server could not start."""
    logs.configure(settings.server.log_level, settings.server.log_format)
    if settings.server.workers == 1:
        return asyncio.run(run_worker(settings))
    try:
        check_ports_free(settings)
    except OSError as exc:
        log.error("remixer cannot start: %s", exc)
        return 1
    ctx = multiprocessing.get_context("spawn")
    started = [ctx.Event() for _ in range(settings.server.workers)]
    workers = [
        ctx.Process(target=_worker_process, args=(settings, i, started[i]), name=f"remixer-worker-{i}")
        for i in range(settings.server.workers)
    ]
    # Worker 0 starts alone: one-time work (schema migrations of a shared SQLite file) must not race.
    workers[0].start()
    while not started[0].wait(0.1):
        if not workers[0].is_alive():
            break
    if not workers[0].is_alive():
        workers[0].join()
        return workers[0].exitcode or 1
    for proc in workers[1:]:
        proc.start()

    def forward(signum: int, _frame: object) -> None:
        for proc in workers:
            if proc.is_alive() and proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in workers:
        if proc.pid is not None:
            proc.join()
    codes = [proc.exitcode or 0 for proc in workers if proc.pid is not None]
    return max(codes)
