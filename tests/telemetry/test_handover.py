"""A rolling restart through real Envoy loses no access-log entry.

Two remixer replicas in Envoy's access-log cluster (gRPC health-checked, as Kubernetes endpoints are by
readiness). Under load, one gets SIGTERM: it reports NOT_SERVING, ends its StreamAccessLogs streams after
their next message (Envoy reopens them through its load balancer, to the healthy replica) and persists
everything it read. Every request Envoy answered must have its entry in one replica's records.
"""

from __future__ import annotations

import asyncio
import http.client
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import orjson

from remixer.kit import envoy
from remixer.kit.echo import EchoServer
from tests.realparts.envoy import EnvoyFactory, ingress
from tests.realparts.remixer import RemixerFactory, RemixerServer
from tests.telemetry.harness import running_telemetry
from tests.telemetry.test_bad_input import METHOD, entry, http_message, received
from tests.waiting import eventually, wait_until

ALS = "access_logs.grpc_access_log."


def als_cluster(name: str, ports: list[int]) -> dict[str, Any]:
    """Envoy's access-log cluster over several replicas, health-checked with gRPC health (the way an
    orchestrator's readiness removes a draining pod's endpoint)."""
    cluster = envoy.grpc_cluster(name, "127.0.0.1", ports[0])
    cluster["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": envoy.socket_address("127.0.0.1", p)}} for p in ports]}
    ]
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "0.2s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }
    ]
    return cluster


def kept_request_ids(server: RemixerServer) -> set[str]:
    """The request ids of the access-log records a replica kept (Kafka off: its local record files)."""
    directory = server.data_dir / "records" / "access-logs"
    if not directory.is_dir():
        return set()
    lines = [line for path in sorted(directory.glob("*.jsonl")) for line in path.read_bytes().splitlines()]
    return {str(orjson.loads(line)["request_id"]) for line in lines if line.endswith(b"}")}


class Load:
    """Clients sending requests with unique x-request-ids through Envoy until stopped."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.answered: set[str] = set()
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        n = 0
        while not self._stop.is_set():
            request_id = f"handover-{index}-{n}"
            n += 1
            try:
                conn.request("GET", f"/r/{n}", headers={"x-request-id": request_id})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            with self._lock:
                if ok:
                    self.answered.add(request_id)
                else:
                    self.failed += 1
        conn.close()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_rolling_restart_loses_no_entry(remixer_factory: RemixerFactory, envoy_factory: EnvoyFactory) -> None:
    section = {"parts": ["telemetry", "admin"], "drain_seconds": 3, "stop_grace_s": 1}
    replicas = [remixer_factory(server=section), remixer_factory(server=section)]
    listen, admin = envoy.free_port(), envoy.free_port()
    with EchoServer() as upstream:
        proxy = envoy_factory(
            ingress(
                admin=admin,
                listen=listen,
                upstream=upstream.port,
                clusters=[als_cluster("remixer_als", [r.grpc_port for r in replicas])],
                access_log=[envoy.http_grpc_access_log("remixer_als", flush="0.2s")],
            )
        )
        with Load(listen) as load:
            wait_until(
                lambda: sum(len(kept_request_ids(r)) for r in replicas) >= 250,
                within=20,
                what="250 access-log entries at remixer",
            )
            # Restart the replica holding Envoy's streams (each Envoy worker picks one, round robin).
            leaving, staying = sorted(replicas, key=lambda r: len(kept_request_ids(r)), reverse=True)
            before = len(kept_request_ids(leaving))
            wait_until(  # still streaming to it right now
                lambda: len(kept_request_ids(leaving)) > before,
                within=20,
                what="entries at the leaving replica",
            )
            assert leaving.proc is not None
            leaving.proc.send_signal(signal.SIGTERM)
            assert leaving.proc.wait(30) == 0
            after_exit = len(load.answered)
            wait_until(  # the staying replica takes over
                lambda: len(load.answered) >= after_exit + 250, within=30, what="250 answers after the exit"
            )
        answered = load.answered
        written = f"{ALS}logs_written"
        wait_until(
            lambda: proxy.stats(written).get(written, 0) >= len(answered),
            within=20,
            what="Envoy logging every answered request",
        )
        received: set[str] = set()
        deadline = time.monotonic() + 20
        while not answered <= (received := kept_request_ids(leaving) | kept_request_ids(staying)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        stats = proxy.stats(ALS)
    assert staying.stop() == 0
    received = kept_request_ids(leaving) | kept_request_ids(staying)
    missing = answered - received
    print(
        f"rolling restart: {len(answered)} requests answered ({load.failed} failed), entries on the "
        f"leaving replica {len(kept_request_ids(leaving))}, on the staying one "
        f"{len(kept_request_ids(staying))}, missing {len(missing)}; envoy {stats}"
    )
    assert not missing, sorted(missing)[:10]
    assert stats.get(f"{ALS}logs_dropped", 0) == 0


async def test_hand_over_ends_each_stream_right_after_the_message_it_read(tmp_path: Path) -> None:
    """In process: once the drain begins, a stream open before it and one opened during it are each
    ended by the server (status OK, the client never half-closed) right after their next message,
    whose entries are kept."""
    async with running_telemetry(tmp_path) as tel:
        async with grpc.aio.insecure_channel(tel.target) as channel:
            method = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
            before = method()
            await before.write(http_message([entry()] * 3, first=True))
            await eventually(lambda: received(tel) == 3, within=5, what="the first message's 3 entries")
            assert not before.done()  # serving normally: the stream stays open
            tel.part.hand_over()
            await before.write(http_message([entry()] * 2))
            await asyncio.wait_for(before, 5)  # ended by the server, not by us
            assert await before.code() == grpc.StatusCode.OK
            during = method()
            await during.write(http_message([entry()] * 4, first=True))
            await asyncio.wait_for(during, 5)
            assert await during.code() == grpc.StatusCode.OK
        assert received(tel) == 9
        assert tel.value("remixer_telemetry_records_exported_total") == 9
