"""The kube sink: lightkube over real HTTP against the fake API server (tests/controller/fakekube.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from controller.adapters.kubernetes import KubeSink
from controller.errors import SinkFailed
from controller.settings import ControllerSettings
from tests.controller.conftest import assert_valid_sidecar, hosts
from tests.controller.fakekube import FakeKube
from tests.controller.helpers import run_at, run_cli
from tests.controller.meshdata import call, fqdn
from tests.realparts.prometheus import PrometheusFactory, openmetrics_text

OWNER = {"app.kubernetes.io/managed-by": "remixer-controller"}


def _deployment(namespace: str, name: str, labels: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}}},
    }


def _service(namespace: str, name: str, ports: int = 1) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"port": 80 + i, "name": f"http-{i}"} for i in range(ports)]},
    }


def _human_sidecar(namespace: str, name: str, selector: dict[str, str] | None) -> dict[str, object]:
    spec: dict[str, object] = {"egress": [{"hosts": ["*/*"]}]}
    if selector:
        spec["workloadSelector"] = {"labels": selector}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "payments"}},
        "spec": spec,
    }


@pytest.fixture
def mesh(prometheus_factory: PrometheusFactory) -> tuple[str, float]:
    now = time.time()
    series = [
        call(now, source=("shop", "frontend"), service=("shop", "cart")),
        call(now, source=("shop", "frontend"), service=("pay", "billing")),
        call(now, source=("shop", "cart"), service=("data", "redis"), protocol="tcp"),
        call(now, source=("pay", "billing"), service=("data", "ledger")),
        call(now, source=("pay", "fraud-v2"), service=("data", "ledger")),
    ]
    return prometheus_factory(openmetrics=openmetrics_text(series)).url, now


async def test_server_side_apply_prune_and_people_s_sidecars(
    mesh: tuple[str, float], fake_kube: tuple[FakeKube, str], tmp_path: Path
) -> None:
    prom_url, now = mesh
    kube, api_url = fake_kube
    kube.put("apps/v1", "deployments", _deployment("shop", "frontend", {"app": "frontend", "tier": "web"}))
    cart = _deployment("shop", "cart", {"app": "cart", "role": "store"})
    cart["kind"] = "StatefulSet"
    kube.put("apps/v1", "statefulsets", cart)
    for namespace, name in (("shop", "cart"), ("pay", "billing"), ("data", "redis"), ("data", "ledger")):
        kube.put("v1", "services", _service(namespace, name, ports=2))
    for extra in range(30):
        kube.put("v1", "services", _service("other", f"unused{extra}"))
    # People's Sidecars: one selects the same pods as our billing scope would; one is a stale one of ours.
    kube.put(
        "networking.istio.io/v1", "sidecars", _human_sidecar("pay", "billing-by-hand", {"app": "billing"})
    )
    stale = _human_sidecar("shop", "remixer-gone", {"app": "gone"})
    stale["metadata"]["labels"] = dict(OWNER)  # type: ignore[index]
    kube.put("networking.istio.io/v1", "sidecars", stale, manager="remixer-controller")
    settings = ControllerSettings(
        prometheus_url=prom_url, kubernetes_api_url=api_url, max_removed_percent=100
    )

    summary = await run_at(settings, sink="kube", data_dir=tmp_path, now=now)
    assert summary.outcome == "wrote", summary.message
    stored = {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in kube.items()}
    assert sorted(stored) == [
        "pay/billing-by-hand",
        "pay/remixer-fraud-v2",
        "shop/remixer-cart",
        "shop/remixer-frontend",
    ]
    frontend = stored["shop/remixer-frontend"]
    assert_valid_sidecar({k: frontend[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    # Kubernetes' own pod selector beats the metrics' app/version labels.
    assert frontend["spec"]["workloadSelector"]["labels"] == {"app": "frontend", "tier": "web"}
    assert stored["shop/remixer-cart"]["spec"]["workloadSelector"]["labels"] == {
        "app": "cart",
        "role": "store",
    }
    assert hosts(frontend) == [
        "istio-system/*",
        f"pay/{fqdn('billing', 'pay')}",
        f"shop/{fqdn('cart', 'shop')}",
    ]
    assert frontend["metadata"]["labels"] == OWNER
    assert [m["manager"] for m in frontend["metadata"]["managedFields"]] == ["remixer-controller"]
    assert stored["pay/billing-by-hand"]["spec"] == {
        "egress": [{"hosts": ["*/*"]}],
        "workloadSelector": {"labels": {"app": "billing"}},
    }
    skipped = [c for c in summary.changes if c.action == "skipped"]
    assert [(c.name, "selected by Sidecar billing-by-hand" in c.reason) for c in skipped] == [
        ("remixer-billing", True)
    ]
    applies = [r for r in kube.requests if r[0] == "PATCH"]
    assert all(q["fieldManager"] == ["remixer-controller"] and q["force"] == ["true"] for _, _, q in applies)
    # The Service list feeds the xDS estimate: 2 ports each on 4 services + 30 unused ones.
    assert summary.shrink is not None
    assert summary.shrink.cluster_reduction > 0.5

    versions = {k: v["metadata"]["resourceVersion"] for k, v in stored.items()}
    requests_before = len(kube.requests)
    again = await run_at(settings, sink="kube", data_dir=tmp_path, now=now + 30)
    assert (again.outcome, again.written, again.deleted) == ("nothing-to-write", 0, 0)
    assert not [r for r in kube.requests[requests_before:] if r[0] in ("PATCH", "DELETE")]
    assert versions == {
        f"{o['metadata']['namespace']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
        for o in kube.items()
    }


async def test_dry_run_is_a_server_side_dry_run(
    mesh: tuple[str, float], fake_kube: tuple[FakeKube, str], tmp_path: Path
) -> None:
    prom_url, now = mesh
    kube, api_url = fake_kube
    settings = ControllerSettings(prometheus_url=prom_url, kubernetes_api_url=api_url)
    summary = await run_at(settings, sink="kube", data_dir=tmp_path, now=now, dry_run=True)
    assert summary.outcome == "dry-run"
    assert summary.written == 4
    assert kube.items() == []
    patches = [q for method, _, q in kube.requests if method == "PATCH"]
    assert len(patches) == 4
    assert all(q.get("dryRun") == ["All"] for q in patches)
    # Nothing was remembered either: a real run afterwards writes everything.
    real = await run_at(settings, sink="kube", data_dir=tmp_path, now=now)
    assert real.written == 4
    assert len(kube.items()) == 4


def test_api_errors_stop_the_run_with_a_clear_message(
    mesh: tuple[str, float],
    fake_kube: tuple[FakeKube, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prom_url, _ = mesh
    kube, api_url = fake_kube
    sink = KubeSink(api_url=api_url, field_manager="m", owner_label="a", owner_value="b")
    kube.fail_next = [403]
    with pytest.raises(SinkFailed, match="403"):
        sink.observe()
    sink.close()
    kube.fail_next = [503]
    code, out, _ = run_cli(
        [
            "run-once",
            "--prometheus-url",
            prom_url,
            "--sink",
            "kube",
            "--kube-api-url",
            api_url,
            "--data-dir",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 3
    assert "503" in out
    assert kube.items() == []


def test_fake_api_server_semantics(fake_kube: tuple[FakeKube, str]) -> None:
    """The fake behaves like the API server where the controller depends on it."""
    kube, _ = fake_kube
    body = json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": "x", "namespace": "n"},
            "spec": {"egress": [{"hosts": ["a/b"]}]},
        }
    ).encode()
    ct = {"content-type": "application/apply-patch+yaml"}
    path = "/apis/networking.istio.io/v1/namespaces/n/sidecars/x"
    assert kube.handle("PATCH", path, ct, body)[0] == 400  # fieldManager is required
    assert (
        kube.handle(
            "PATCH", path + "?fieldManager=a", {"content-type": "application/merge-patch+json"}, body
        )[0]
        == 415
    )
    code, created = kube.handle("PATCH", path + "?fieldManager=a", ct, body)
    assert code == 201
    code, same = kube.handle("PATCH", path + "?fieldManager=a", ct, body)
    assert (code, same["metadata"]["resourceVersion"]) == (200, created["metadata"]["resourceVersion"])
    other = body.replace(b"a/b", b"c/d")
    assert kube.handle("PATCH", path + "?fieldManager=b", ct, other)[0] == 409
    code, _ = kube.handle("PATCH", path + "?fieldManager=b&force=true&dryRun=All", ct, other)
    assert code == 200
    assert kube.handle("GET", path, {}, b"")[1]["spec"]["egress"][0]["hosts"] == ["a/b"]
    assert kube.handle("PATCH", path + "?fieldManager=b&force=true", ct, other)[0] == 200
    listed = kube.handle("GET", "/apis/networking.istio.io/v1/sidecars?labelSelector=team%3Dx", {}, b"")[1]
    assert listed["items"] == []
    assert kube.handle("DELETE", path + "?dryRun=All", {}, b"")[0] == 200
    assert kube.handle("DELETE", path, {}, b"")[0] == 200
    assert kube.handle("GET", path, {}, b"")[0] == 404


async def test_namespace_defaults_keep_istio_s_one_selectorless_sidecar_rule(
    mesh: tuple[str, float], fake_kube: tuple[FakeKube, str], tmp_path: Path
) -> None:
    prom_url, now = mesh
    kube, api_url = fake_kube
    # The pay namespace already has a person's namespace-wide Sidecar (under another name).
    kube.put("networking.istio.io/v1", "sidecars", _human_sidecar("pay", "pay-wide", None))
    settings = ControllerSettings(
        prometheus_url=prom_url, kubernetes_api_url=api_url, namespace_default_sidecar=True
    )
    summary = await run_at(settings, sink="kube", data_dir=tmp_path, now=now)
    assert summary.outcome == "wrote", summary.message
    stored = {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in kube.items()}
    assert "shop/default" in stored
    assert "pay/default" not in stored
    shop_default = stored["shop/default"]
    assert "workloadSelector" not in shop_default["spec"]
    assert hosts(shop_default) == sorted(
        [
            "./*",
            "istio-system/*",
            f"data/{fqdn('redis', 'data')}",
            f"pay/{fqdn('billing', 'pay')}",
            f"shop/{fqdn('cart', 'shop')}",
        ]
    )
    skipped = {c.name: c.reason for c in summary.changes if c.action == "skipped" and c.namespace == "pay"}
    assert "selector-less Sidecar (pay-wide)" in skipped["default"]
    # Selector Sidecars still go to pay: Istio prefers them over the namespace-wide one.
    assert "pay/remixer-billing" in stored
