"""The gRPC port over TLS and mTLS, and the admin write guard."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from remixer.kit.admin import ensure_admin_token, token_guard
from tests.realparts.remixer import RemixerFactory


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a SPIFFE client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=remixer-test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    for name, san in (
        ("server", "IP:127.0.0.1,DNS:localhost"),
        ("client", "URI:spiffe://cluster.local/ns/a/sa/b"),
    ):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / f"{name}.ext"),
            "-out",
            str(d / f"{name}.pem"),
        )
    return d


def _health(target: str, credentials: grpc.ChannelCredentials) -> int:
    with grpc.secure_channel(target, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def test_grpc_over_mutual_tls(remixer_factory: RemixerFactory, pki: Path) -> None:
    server = remixer_factory(
        server={
            "grpc_tls": {
                "cert_file": str(pki / "server.pem"),
                "key_file": str(pki / "server.key"),
                "client_ca_file": str(pki / "ca.pem"),
            }
        }
    )
    ca = (pki / "ca.pem").read_bytes()
    with_client_cert = grpc.ssl_channel_credentials(
        ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
    )
    assert _health(server.grpc_target, with_client_cert) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        _health(server.grpc_target, grpc.ssl_channel_credentials(ca))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError), grpc.insecure_channel(server.grpc_target) as plain:
        health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert server.stop() == 0


def test_grpc_over_server_tls(remixer_factory: RemixerFactory, pki: Path) -> None:
    server = remixer_factory(
        server={"grpc_tls": {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")}}
    )
    creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    assert _health(server.grpc_target, creds) == health_pb2.HealthCheckResponse.SERVING
    assert server.stop() == 0


def test_admin_writes_need_the_token(tmp_path: Path) -> None:
    token = ensure_admin_token(None, tmp_path)
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    assert ensure_admin_token(None, tmp_path) == token  # stable across restarts
    router = APIRouter()

    @router.post("/v1/things", dependencies=[Depends(token_guard(token))])
    def create() -> dict[str, bool]:
        return {"created": True}

    app = FastAPI()
    app.include_router(router)
    client = TestClient(app)
    missing = client.post("/v1/things")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/things", headers={"authorization": "Bearer nope"}).status_code == 403
    assert client.post("/v1/things", headers={"authorization": f"Bearer {token}"}).json() == {"created": True}


def test_configured_token_is_never_logged(remixer_factory: RemixerFactory) -> None:
    secret = "tok-7c1d9e2f-do-not-log"
    server = remixer_factory(server={"admin_token": secret, "log_level": "debug"})
    server.metrics()
    assert server.stop() == 0
    assert secret not in server.log()
    assert not (server.data_dir / "admin-token").exists()
