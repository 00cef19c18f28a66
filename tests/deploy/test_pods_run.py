"""The policy and telemetry Deployments, run for real: each container's args, env (secrets stood in) and the
ConfigMap's settings file start a real `remixer serve` that runs only its own parts, answers the manifest's
probes, and drains on SIGTERM within the pod's grace period. Only listen addresses and the data directory are
redirected (env overrides) so the test uses free ports and a temporary directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from remixer.kit.envoy import free_port
from tests.waiting import wait_until

from .paths import SECRET_STAND_INS, kustomize_build

AUTHZ = "envoy.service.auth.v3.Authorization"
ALS = "envoy.service.accesslog.v3.AccessLogService"


def _deployment(name: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    built = kustomize_build("kubernetes/base")
    (dep,) = [o for o in built if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
    (config_map,) = [o for o in built if o["kind"] == "ConfigMap"]
    return dep["spec"]["template"]["spec"], dep, config_map["data"]["remixer.yaml"]


def _health(target: str, service: str) -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@pytest.mark.parametrize(
    ("name", "serving", "absent"),
    [("remixer-policy", AUTHZ, ALS), ("remixer-telemetry", ALS, AUTHZ)],
)
def test_deployment_runs_only_its_parts_and_answers_its_probes(
    tmp_path: Path, name: str, serving: str, absent: str
) -> None:
    pod, dep, settings_file = _deployment(name)
    container = pod["containers"][0]
    config = tmp_path / "remixer.yaml"
    config.write_text(settings_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMIXER_")}
    for var in container["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = SECRET_STAND_INS[ref["key"]] if ref else var["value"]
    grpc_port, admin_port, http_port = free_port(), free_port(), free_port()
    env |= {
        "REMIXER_SERVER__GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "REMIXER_SERVER__ADMIN_ADDRESS": f"127.0.0.1:{admin_port}",
        "REMIXER_POLICY__HTTP_ADDRESS": f"127.0.0.1:{http_port}",
        "REMIXER_SERVER__DATA_DIR": str(tmp_path / "data"),
    }
    args = [str(config) if a == "/etc/remixer/remixer.yaml" else a for a in container["args"]]
    log = tmp_path / "remixer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "remixer", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(admin + container["readinessProbe"]["httpGet"]["path"], timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready is not None, log.read_text()
        assert ready.status_code == 200, log.read_text()
        part = name.removeprefix("remixer-")
        other = "telemetry" if part == "policy" else "policy"
        assert f"{part}:" in ready.text
        assert f"{other}:" not in ready.text
        assert httpx.get(admin + container["livenessProbe"]["httpGet"]["path"], timeout=2).status_code == 200
        assert httpx.get(admin + "/metrics", timeout=2).status_code == 200
        target = f"127.0.0.1:{grpc_port}"
        assert _health(target, serving) == "SERVING"
        assert _health(target, absent) == "NOT_FOUND"
        proc.send_signal(signal.SIGTERM)
        if part == "telemetry":
            # The whole drain (both Deployments share the ConfigMap's shutdown settings) fits the grace.
            assert proc.wait(pod["terminationGracePeriodSeconds"]) == 0, log.read_text()
        else:
            # Draining: no longer ready, no longer SERVING, yet still answering; a second signal hurries.
            probe = admin + container["readinessProbe"]["httpGet"]["path"]
            wait_until(lambda: httpx.get(probe, timeout=1).status_code == 503, within=5, what="not ready")
            assert _health(target, serving) == "NOT_SERVING"
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert dep["metadata"]["name"] == name
