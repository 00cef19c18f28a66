"""`remixer serve` as a user runs it: ports, signals, gRPC plumbing, and a real Envoy in front."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from remixer.kit import envoy
from remixer.kit.echo import EchoServer
from tests.realparts.envoy import EnvoyFactory, ingress
from tests.realparts.remixer import RemixerFactory, RemixerServer
from tests.waiting import wait_until


def check_request(path: str = "/", request_id: str = "r-1") -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.id, http.method, http.path, http.host = request_id, "GET", path, "svc.local"
    http.headers.update({":path": path, ":method": "GET", "x-request-id": request_id})
    return req


def test_health_reflection_and_check(remixer_factory: RemixerFactory) -> None:
    server = remixer_factory()
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in (
            "",
            "envoy.service.auth.v3.Authorization",
            "envoy.service.accesslog.v3.AccessLogService",
        ):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"envoy.service.auth.v3.Authorization", "envoy.service.accesslog.v3.AccessLogService"} <= names
        response = external_auth_pb2_grpc.AuthorizationStub(channel).Check(check_request(), timeout=5)
        assert response.HasField("status")
    assert server.stop() == 0


def test_unknown_method_is_unimplemented_and_server_keeps_serving(remixer_factory: RemixerFactory) -> None:
    server = remixer_factory()
    with grpc.insecure_channel(server.grpc_target) as channel:
        bogus = channel.unary_unary("/envoy.service.auth.v3.Authorization/Nope")
        with pytest.raises(grpc.RpcError) as err:
            bogus(b"\x0a\x00", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        garbage = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        # Undecodable bytes get the policy's decision (never an exception escaping to gRPC).
        assert garbage(b"\xff\xff\xff\xff", timeout=5)
        response = external_auth_pb2_grpc.AuthorizationStub(channel).Check(check_request(), timeout=5)
        assert response.HasField("status")
    assert httpx.get(server.admin_url + "/healthz").status_code == 200
    assert server.stop() == 0


@pytest.mark.parametrize("holder", ["plain-socket", "grpc-with-reuseport"])
def test_refuses_to_start_when_the_grpc_port_is_taken(remixer_factory: RemixerFactory, holder: str) -> None:
    server = remixer_factory(start=False)
    if holder == "plain-socket":
        sock = socket.socket()
        sock.bind(("127.0.0.1", server.grpc_port))
        sock.listen()
        closer = sock.close
    else:
        # grpc's default SO_REUSEPORT would let a second server share the port silently.
        other = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(1))
        assert other.add_insecure_port(server.grpc_target) == server.grpc_port
        other.start()
        closer = lambda: other.stop(None)  # noqa: E731
    try:
        server.start(wait=False)
        assert server.proc is not None
        assert server.proc.wait(30) == 1
        assert f"server.grpc_address 127.0.0.1:{server.grpc_port} is already in use" in server.log()
    finally:
        closer()


def test_refuses_to_start_when_the_admin_port_is_taken(remixer_factory: RemixerFactory) -> None:
    server = remixer_factory(start=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", server.admin_port))
        sock.listen()
        server.start(wait=False)
        assert server.proc is not None
        assert server.proc.wait(30) == 1
    assert "server.admin_address" in server.log()
    assert "already in use" in server.log()


def test_sigterm_drains_and_exits_zero(remixer_factory: RemixerFactory) -> None:
    server = remixer_factory()
    assert httpx.get(server.admin_url + "/readyz").status_code == 200
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 15
    assert "remixer stopped" in server.log()


def test_workers_share_the_ports(remixer_factory: RemixerFactory) -> None:
    server = remixer_factory("--workers", "2")
    for i in range(12):  # new channels land on either worker
        with grpc.insecure_channel(server.grpc_target) as channel:
            response = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(request_id=f"w{i}")
            )
            assert response.HasField("status")
    assert server.stop() == 0


def _spooled_files_containing(data_dir: Path, needle: bytes) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_envoy_end_to_end_check_and_access_log_for_the_same_request(
    remixer_factory: RemixerFactory, envoy_factory: EnvoyFactory
) -> None:
    server: RemixerServer = remixer_factory()
    listen, admin = envoy.free_port(), envoy.free_port()
    with EchoServer() as upstream:
        proxy = envoy_factory(
            ingress(
                admin=admin,
                listen=listen,
                upstream=upstream.port,
                clusters=[envoy.grpc_cluster("remixer", "127.0.0.1", server.grpc_port)],
                http_filters=[envoy.ext_authz_grpc_filter("remixer")],
                access_log=[envoy.http_grpc_access_log("remixer")],
            )
        )
        request_id = "e2e-4f7d2c1a-0001"
        req = urllib.request.Request(f"http://127.0.0.1:{listen}/hello", headers={"x-request-id": request_id})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        # Envoy's own counters witness the Check and the log entry it sent; remixer's that it arrived
        # (Envoy sends its buffered entries every buffer_flush_interval), before remixer drains to disk.
        written = "access_logs.grpc_access_log.logs_written"
        wait_until(lambda: proxy.stats(written).get(written, 0) >= 1, what="Envoy's access-log entry")
        assert proxy.stats("http.ingress_http.ext_authz.ok")["http.ingress_http.ext_authz.ok"] == 1
        received = "remixer_telemetry_entries_received_total"
        wait_until(lambda: server.metric(received, kind="http") >= 1, what="the entry received by remixer")
        proxy.stop()
    assert server.stop() == 0
    needle = request_id.encode()
    files = _spooled_files_containing(server.data_dir, needle)
    assert any("decision" in str(p) for p in files), f"no decision record for {request_id}: {files}"
    assert any("access" in str(p) for p in files), f"no access-log record for {request_id}: {files}"


def _closed_after(sock: socket.socket, within: float) -> float:
    """Seconds until the server closes `sock` (EOF or reset); fails if it stays open `within` seconds."""
    sock.settimeout(within)
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_admin_port_closes_idle_slow_and_oversized_clients(remixer_factory: RemixerFactory) -> None:
    server = remixer_factory(
        server={"parts": ["admin"], "admin_idle_timeout_s": 1, "admin_header_timeout_s": 1.5}
    )
    address = ("127.0.0.1", server.admin_port)
    with socket.create_connection(address) as silent:
        assert 1.0 <= _closed_after(silent, 10) < 5
    with socket.create_connection(address) as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_after(kept, 10) < 5  # idle after its answer
    with socket.create_connection(address) as slow:
        slow.settimeout(10)
        started = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nx-slow: " + b"a" * 200:
                slow.sendall(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        _closed_after(slow, 10)
        assert 1.5 <= time.monotonic() - started < 6  # bytes kept coming: the head timeout closed it
    with socket.create_connection(address) as big:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            big.sendall(b"GET /healthz HTTP/1.1\r\nx-big: " + b"a" * 200_000)
        assert _closed_after(big, 10) < 1.4  # closed for its size, before any timeout
    assert httpx.get(server.admin_url + "/healthz", timeout=5).status_code == 200


def test_sigterm_reports_not_serving_and_keeps_answering_until_the_drain_ends(
    remixer_factory: RemixerFactory,
) -> None:
    server = remixer_factory(server={"drain_seconds": 3, "stop_grace_s": 0.5})
    assert server.proc is not None
    base = f"http://127.0.0.1:{server.http_authz_port}"
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        authz = external_auth_pb2_grpc.AuthorizationStub(channel)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        deadline = signalled + 2
        while (
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            != health_pb2.HealthCheckResponse.NOT_SERVING
        ):
            assert time.monotonic() < deadline, "health still SERVING after SIGTERM"
            time.sleep(0.02)
        assert httpx.get(server.admin_url + "/readyz", timeout=5).status_code == 503
        answered = 0
        while time.monotonic() - signalled < 2.5:  # inside the drain: every Check still answered
            assert authz.Check(check_request(request_id=f"d{answered}"), timeout=5).HasField("status")
            assert httpx.get(base + "/during-drain", timeout=5).status_code == 200
            answered += 1
    assert answered > 10
    assert server.proc.wait(15) == 0
    assert time.monotonic() - signalled >= 3  # it served the whole drain


def test_sigint_skips_the_hand_over(remixer_factory: RemixerFactory) -> None:
    server = remixer_factory(server={"drain_seconds": 30, "stop_grace_s": 0.5})
    assert server.proc is not None
    started = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(15) == 0
    assert time.monotonic() - started < 10
