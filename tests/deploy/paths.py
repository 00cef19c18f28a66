"""Where deploy/ and ../shared live, and how to build the Kustomize trees (shared by the deploy tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# CI clones main with shared/ beside it.
SHARED = REPO.parent / "shared"
ISTIO_CRDS = SHARED / "istio-crds"

# The Kubernetes version every core object is validated against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.30.0"

KUSTOMIZATIONS = ["kubernetes/base", "kubernetes/overlays/dev", "kubernetes/overlays/production", "istio"]


def kubectl() -> str:
    """kubectl carries kustomize (v5) built in; every machine image of this project ships it."""
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("kubectl not found: install it (it provides `kubectl kustomize`)")
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
