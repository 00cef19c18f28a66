"""Controller test wiring: CRD validation, the fake Kubernetes API, settings and run helpers."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.controller.fakekube import FakeKube

SIDECAR_CRD = Path(__file__).resolve().parents[1] / "istio-crds" / "sidecar-crd.yaml"


@functools.cache
def sidecar_schema() -> dict[str, Any]:
    crd = next(doc for doc in yaml.safe_load_all(SIDECAR_CRD.read_text()) if doc)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@functools.cache
def sidecar_validator() -> jsonschema.protocols.Validator:
    schema = sidecar_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def assert_valid_sidecar(manifest: dict[str, Any]) -> None:
    """Istio's own CRD schema (structure, types, enums; CEL rules are not evaluated by jsonschema)."""
    assert manifest["apiVersion"] == "networking.istio.io/v1"
    assert manifest["kind"] == "Sidecar"
    sidecar_validator().validate(manifest)
    for listener in manifest["spec"]["egress"]:
        assert listener["hosts"], "an egress listener needs hosts"
        for host in listener["hosts"]:
            namespace, _, name = host.partition("/")
            assert namespace, host
            assert name, host
    labels = (manifest["spec"].get("workloadSelector") or {}).get("labels", {})
    assert all("*" not in value and len(value) <= 63 for value in labels.values())


def read_dir_sidecars(root: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(root.glob("*/*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        assert_valid_sidecar(manifest)
        found[f"{path.parent.name}/{path.stem}"] = manifest
    return found


def hosts(manifest: dict[str, Any]) -> list[str]:
    return list(manifest["spec"]["egress"][0]["hosts"])


@pytest.fixture
def fake_kube() -> Iterator[tuple[FakeKube, str]]:
    """The fake API server enforcing deploy/'s RBAC and Istio's Sidecar schema."""
    kube = FakeKube(crd_validator=sidecar_validator())
    url = kube.start()
    yield kube, url
    kube.stop()
