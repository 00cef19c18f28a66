"""Where deploy/ and the Istio CRD schemas live, and how to build the Kustomize trees (shared by the deploy
tests)."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# Istio's own CRD files, copied verbatim (each names its istio/api commit), so a checkout anywhere validates.
ISTIO_CRDS = REPO / "tests" / "istio-crds"

# The Kubernetes version every core object is validated against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.30.0"


# Secret keys the manifests reference, with stand-in values of the right shape for settings validation.
SECRET_STAND_INS = {
    "admin-token": "stand-in-admin-token",
    "kafka-username": "remixer",
    "kafka-password": "stand-in",
    "policy-database-url": "postgresql+asyncpg://remixer:pw@postgres.db.svc:5432/remixer",
    "controller-database-url": "postgresql+asyncpg://remixer:pw@postgres.db.svc:5432/remixer",
    "redis-url": "redis://redis.db.svc:6379/0",
    "call-edges-database-url": "postgresql+asyncpg://remixer:pw@postgres.db.svc:5432/edges",
}


@functools.cache
def kubectl() -> str:
    """kubectl with kustomize v4+ built in (components, `labels`); this project's machine image has it."""
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("kubectl not found: install kubectl (>= 1.21) for `kubectl kustomize`")
    version = subprocess.run(
        [path, "version", "--client", "-o", "json"], capture_output=True, text=True, check=False, timeout=30
    )
    kustomize = json.loads(version.stdout or "{}").get("kustomizeVersion", "v0")
    if int(kustomize.lstrip("v").split(".")[0]) < 4:
        raise RuntimeError(
            f"{path} embeds kustomize {kustomize}; deploy/ needs v4 or newer (kubectl >= 1.21)"
        )
    return path


def kustomize_build(relative: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / relative)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kustomize build {relative} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
