"""`remixer serve` with telemetry: on SIGTERM every record in memory reaches the spool before exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from remixer.kit.envoy import free_port
from remixer.kit.shipping.spool import Spool

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"


def messages(count: int, per: int) -> list[bytes]:
    out = []
    for m in range(count):
        msg = als_pb2.StreamAccessLogsMessage()
        if m == 0:
            msg.identifier.log_name = "http_envoy_accesslog"
            msg.identifier.node.id = "sidecar~10.0.0.1~web-1.shop~shop.svc.cluster.local"
        for i in range(per):
            e = accesslog_pb2.HTTPAccessLogEntry()
            e.common_properties.upstream_cluster = "outbound|80||api.shop.svc.cluster.local"
            e.request.request_id = f"{m}-{i}"
            e.response.response_code.value = 200
            msg.http_logs.log_entry.append(e)
        out.append(msg.SerializeToString())
    return out


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigterm_spools_every_record(tmp_path: Path) -> None:
    grpc_port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        "REMIXER_SERVER__PARTS": '["telemetry","admin"]',
        "REMIXER_SERVER__GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "REMIXER_SERVER__ADMIN_ADDRESS": f"127.0.0.1:{admin_port}",
        "REMIXER_SERVER__DATA_DIR": str(tmp_path),
        "REMIXER_SERVER__DRAIN_SECONDS": "0.5",
        # Kafka pointed at a port nobody listens on: records wait in memory and the spool.
        "REMIXER_SHIPPING__KAFKA__ENABLED": "true",
        "REMIXER_SHIPPING__KAFKA__BOOTSTRAP_SERVERS": f'["127.0.0.1:{free_port()}"]',
        "REMIXER_SHIPPING__KAFKA__RETRY_BACKOFF_S": "30",
    }
    proc = subprocess.Popen([sys.executable, "-m", "remixer.cli", "serve"], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                scrape(admin_port, "remixer_telemetry_entries_received_total")
                break
            except OSError:
                assert time.monotonic() < deadline, "remixer serve did not come up"
                time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            call = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
            call(iter(messages(20, 50)), timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    spool = Spool(tmp_path / "spool" / "access-logs", max_bytes=1 << 30, segment_bytes=1 << 20)
    records, _ = spool.read(max_records=10_000, max_bytes=1 << 30)
    assert len(records) == 1000
    assert {r[0] for r in records} == {b"api.shop.svc.cluster.local"}
