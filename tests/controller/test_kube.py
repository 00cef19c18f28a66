"""The kube sink: lightkube over real HTTP against the fake API server (tests/controller/fakekube.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml

from controller.adapters.kubernetes import KubeSink
from controller.errors import SinkFailed
from controller.settings import ControllerSettings
from tests.controller.conftest import assert_valid_sidecar, hosts
from tests.controller.fakekube import RBAC_FILE, ApiFailure, FakeKube
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


def _pod(namespace: str, name: str, owner: tuple[str, str], labels: dict[str, str]) -> dict[str, object]:
    """A pod as its ReplicaSet or StatefulSet creates it: generateName and a controller ownerReference."""
    kind, owner_name = owner
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generateName": name[: name.rindex("-") + 1],
            "labels": labels,
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": kind, "name": owner_name, "uid": "u", "controller": True}
            ],
        },
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }


def _by_name(kube: FakeKube) -> dict[str, dict[str, object]]:
    return {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in kube.items()}


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
    # People's Sidecars: one selects pods our fraud-v2 scope would select; one is a stale one of ours.
    kube.put(
        "networking.istio.io/v1",
        "sidecars",
        _human_sidecar("pay", "fraud-by-hand", {"service.istio.io/canonical-name": "fraud"}),
    )
    stale = _human_sidecar("shop", "remixer-gone", {"app": "gone"})
    stale["metadata"]["labels"] = dict(OWNER)  # type: ignore[index]
    kube.put("networking.istio.io/v1", "sidecars", stale, manager="remixer-controller")
    settings = ControllerSettings(
        prometheus_url=prom_url, kubernetes_api_url=api_url, max_removed_percent=100
    )

    summary = await run_at(settings, sink="kube", data_dir=tmp_path, now=now)
    assert summary.outcome == "wrote", summary.message
    stored = _by_name(kube)
    assert sorted(stored) == [
        "data/remixer-ledger-v1",
        "data/remixer-redis-v1",
        "pay/fraud-by-hand",
        "shop/remixer-cart",
        "shop/remixer-cart-v1",
        "shop/remixer-frontend",
    ]
    frontend = stored["shop/remixer-frontend"]
    assert_valid_sidecar({k: frontend[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    # Kubernetes' own pod selector beats the metrics' labels.
    assert frontend["spec"]["workloadSelector"]["labels"] == {"app": "frontend", "tier": "web"}
    assert stored["shop/remixer-cart"]["spec"]["workloadSelector"]["labels"] == {
        "app": "cart",
        "role": "store",
    }
    assert hosts(frontend) == [
        "istio-system/*",
        f"pay/{fqdn('billing', 'pay')}",
        "remixer/*",
        f"shop/{fqdn('cart', 'shop')}",
    ]
    assert frontend["metadata"]["labels"] == OWNER
    assert [m["manager"] for m in frontend["metadata"]["managedFields"]] == ["remixer-controller"]
    assert stored["pay/fraud-by-hand"]["spec"] == {
        "egress": [{"hosts": ["*/*"]}],
        "workloadSelector": {"labels": {"service.istio.io/canonical-name": "fraud"}},
    }
    skipped = [c for c in summary.changes if c.action == "skipped"]
    assert [(c.name, "selected by Sidecar fraud-by-hand" in c.reason) for c in skipped] == [
        ("remixer-fraud-v2", True)
    ]
    # Telemetry says pay/billing and pay/billing-v1 both run pods labelled canonical billing/v1: no guess.
    no_sidecar = "\n".join(summary.extra["no_sidecar"])
    assert "pay/billing: its pod labels" in no_sidecar
    assert "pay/billing-v1: its pod labels" in no_sidecar
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
    assert versions == {k: v["metadata"]["resourceVersion"] for k, v in _by_name(kube).items()}


async def test_a_foreign_label_is_left_alone_and_causes_no_update(
    mesh: tuple[str, float], fake_kube: tuple[FakeKube, str], tmp_path: Path
) -> None:
    prom_url, now = mesh
    kube, api_url = fake_kube
    settings = ControllerSettings(prometheus_url=prom_url, kubernetes_api_url=api_url)
    assert (await run_at(settings, sink="kube", data_dir=tmp_path, now=now)).outcome == "wrote"

    def label(obj: dict[str, object]) -> None:
        obj["metadata"]["labels"]["argocd.argoproj.io/instance"] = "mesh"  # type: ignore[index]
        obj["metadata"]["annotations"]["team"] = "payments"  # type: ignore[index]

    # What `kubectl label` / Argo CD do: an Update by another manager, who then owns those fields.
    kube.edit("networking.istio.io/v1", "sidecars", "shop", "remixer-frontend", label, manager="argocd")
    before = kube.get("networking.istio.io/v1", "sidecars", "shop", "remixer-frontend")
    requests_before = len(kube.requests)
    again = await run_at(settings, sink="kube", data_dir=tmp_path, now=now + 30)
    assert (again.outcome, again.written) == ("nothing-to-write", 0)
    assert not [r for r in kube.requests[requests_before:] if r[0] in ("PATCH", "DELETE")]
    after = kube.get("networking.istio.io/v1", "sidecars", "shop", "remixer-frontend")
    assert after == before
    assert after["metadata"]["labels"]["argocd.argoproj.io/instance"] == "mesh"
    # A real change is applied, and the other manager's label survives it.
    more = ControllerSettings(
        prometheus_url=prom_url, kubernetes_api_url=api_url, pinned_hosts=["ops/audit.ops.svc.cluster.local"]
    )
    changed = await run_at(more, sink="kube", data_dir=tmp_path, now=now + 60)
    assert changed.outcome == "wrote"
    updated = kube.get("networking.istio.io/v1", "sidecars", "shop", "remixer-frontend")
    assert "ops/audit.ops.svc.cluster.local" in hosts(updated)
    assert updated["metadata"]["labels"]["argocd.argoproj.io/instance"] == "mesh"
    assert updated["metadata"]["annotations"]["team"] == "payments"


async def test_a_canonical_name_override_does_not_select_another_deployment(
    prometheus_factory: PrometheusFactory, fake_kube: tuple[FakeKube, str], tmp_path: Path
) -> None:
    """frontend's pods say app=frontend but canonical-name web; Deployment web's pods are app=web."""
    now = time.time()
    series = [
        call(now, source=("shop", "frontend"), service=("shop", "cart"), app="web"),
        call(now, source=("shop", "web"), service=("shop", "search"), app="web", version="v2"),
    ]
    prom_url = prometheus_factory(openmetrics=openmetrics_text(series)).url
    # Without an inventory: selected by the injector's labels, name and revision.
    out = tmp_path / "dir"
    summary = await run_at(
        ControllerSettings(prometheus_url=prom_url), sink=f"dir:{out}", data_dir=tmp_path, now=now
    )
    assert summary.outcome == "wrote", summary.message
    from tests.controller.conftest import read_dir_sidecars

    found = read_dir_sidecars(out)
    assert found["shop/remixer-frontend"]["spec"]["workloadSelector"]["labels"] == {
        "service.istio.io/canonical-name": "web",
        "service.istio.io/canonical-revision": "v1",
    }
    assert found["shop/remixer-web"]["spec"]["workloadSelector"]["labels"] == {
        "service.istio.io/canonical-name": "web",
        "service.istio.io/canonical-revision": "v2",
    }
    # With the kube inventory: the Deployments' own labels, checked against every pod.
    kube, api_url = fake_kube
    frontend_labels = {"app": "frontend", "service.istio.io/canonical-name": "web", "version": "v1"}
    web_labels = {"app": "web", "version": "v2"}
    kube.put("apps/v1", "deployments", _deployment("shop", "frontend", frontend_labels))
    kube.put("apps/v1", "deployments", _deployment("shop", "web", web_labels))
    # A second Deployment whose selector (app=web) also matches a canary's pods.
    canary = _deployment("shop", "web-canary", {"app": "web", "track": "canary"})
    kube.put("apps/v1", "deployments", canary)
    for name, owner, labels in (
        ("frontend-7c9d8f-abcde", ("ReplicaSet", "frontend-7c9d8f"), frontend_labels),
        ("web-5b6c7d-fghij", ("ReplicaSet", "web-5b6c7d"), web_labels),
        ("web-canary-6f7e8d-klmno", ("ReplicaSet", "web-canary-6f7e8d"), {"app": "web", "track": "canary"}),
    ):
        # The injector adds its labels to every pod (istio-discovery injection-template.yaml).
        pod_labels = {
            **labels,
            "pod-template-hash": owner[1].rsplit("-", 1)[1],
            "security.istio.io/tlsMode": "istio",
            "service.istio.io/canonical-name": labels.get("service.istio.io/canonical-name", labels["app"]),
            "service.istio.io/canonical-revision": labels.get("version", "latest"),
        }
        kube.put("v1", "pods", _pod("shop", name, owner, pod_labels))
    settings = ControllerSettings(prometheus_url=prom_url, kubernetes_api_url=api_url)
    summary = await run_at(settings, sink="kube", data_dir=tmp_path / "kube", now=now)
    assert summary.outcome == "wrote", summary.message
    stored = _by_name(kube)
    pods = kube.items("v1", "pods")

    def selected(sidecar: str) -> list[str]:
        wanted = stored[sidecar]["spec"]["workloadSelector"]["labels"]  # type: ignore[index]
        return [p["metadata"]["name"] for p in pods if wanted.items() <= p["metadata"]["labels"].items()]

    assert selected("shop/remixer-frontend") == ["frontend-7c9d8f-abcde"]
    # app=web alone would take the canary's pod too: the full pod template is used instead.
    assert stored["shop/remixer-web"]["spec"]["workloadSelector"]["labels"] == web_labels
    assert selected("shop/remixer-web") == ["web-5b6c7d-fghij"]


async def test_remixer_the_control_plane_and_mesh_providers_are_pinned_by_default(
    mesh: tuple[str, float], fake_kube: tuple[FakeKube, str], tmp_path: Path
) -> None:
    prom_url, now = mesh
    kube, api_url = fake_kube
    # The mesh config as istiod reads it (istio-system/istio, key mesh), with remixer as its providers.
    mesh_config = {
        "extensionProviders": [
            {
                "name": "remixer-ext-authz",
                "envoyExtAuthzGrpc": {"service": "remixer-policy.remixer.svc.cluster.local", "port": 9191},
            },
            {"name": "remixer-als", "envoyHttpAls": {"service": "obs/als.example.com", "port": 9191}},
        ]
    }
    kube.put(
        "v1",
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": yaml.safe_dump(mesh_config)},
        },
    )
    summary = await run_at(
        ControllerSettings(prometheus_url=prom_url, kubernetes_api_url=api_url),
        sink="kube",
        data_dir=tmp_path,
        now=now,
    )
    assert summary.outcome == "wrote", summary.message
    for sidecar in kube.items():
        assert {
            "istio-system/*",
            "remixer/*",
            "obs/als.example.com",
            "remixer/remixer-policy.remixer.svc.cluster.local",
        } <= set(hosts(sidecar)), sidecar["metadata"]["name"]
    assert summary.extra["notes"] == []


async def test_objects_the_api_server_refuses_are_skipped_reported_and_never_block_the_rest(
    prometheus_factory: PrometheusFactory, fake_kube: tuple[FakeKube, str], tmp_path: Path
) -> None:
    now = time.time()
    kube, api_url = fake_kube
    long_name = "w" + "x" * 250
    series = [
        call(now, source=("shop", name), service=("shop", "cart"), app=f"a{i}")
        for i, name in enumerate(["a..b", "a.-b", long_name, "fine"])
    ]
    prom_url = prometheus_factory(openmetrics=openmetrics_text(series)).url
    # A prefix the API server accepts only for short names: the object for `fine` is valid, and a
    # CRD-invalid spec (a namespace-less pinned host the schema allows) is not the issue here.
    settings = ControllerSettings(prometheus_url=prom_url, kubernetes_api_url=api_url)
    summary = await run_at(settings, sink="kube", data_dir=tmp_path, now=now)
    assert summary.outcome == "wrote", summary.message
    assert summary.failed == 0
    names = sorted(_by_name(kube))
    assert "shop/remixer-fine" in names
    assert len(names) == 5  # four callers and the cart leaf, every name valid
    for name in names:
        assert len(name.split("/")[1]) <= 240
    # An object the API server refuses is skipped and reported; the rest are still written.
    bad = ControllerSettings(prometheus_url=prom_url, kubernetes_api_url=api_url)
    original = kube._validate

    def refuse_fine(key: tuple[str, str], name: str, obj: dict[str, object]) -> None:
        if name == "remixer-fine":
            raise ApiFailure(422, "Invalid", f'Sidecar.networking.istio.io "{name}" is invalid: injected')
        original(key, name, obj)

    kube._validate = refuse_fine  # type: ignore[method-assign]
    more = await run_at(
        bad.model_copy(update={"pinned_hosts": ["ops/audit.ops.svc.cluster.local"]}),
        sink="kube",
        data_dir=tmp_path,
        now=now + 30,
    )
    assert more.outcome == "wrote"
    assert more.failed == 1
    failed = [c for c in more.changes if c.action == "failed"]
    assert [(c.name, "422" in c.reason) for c in failed] == [("remixer-fine", True)]
    written = [k for k, v in _by_name(kube).items() if "ops/audit.ops.svc.cluster.local" in hosts(v)]
    assert len(written) == 4


def test_the_role_grants_exactly_the_calls_a_full_run_makes(
    mesh: tuple[str, float], fake_kube: tuple[FakeKube, str], tmp_path: Path
) -> None:
    """The fake enforces deploy/'s ClusterRole; what a full run was authorized for must be all it grants."""
    prom_url, now = mesh
    kube, api_url = fake_kube
    kube.put(
        "v1",
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": "{}"},
        },
    )
    stale = _human_sidecar("shop", "remixer-gone", {"app": "gone"})
    stale["metadata"]["labels"] = dict(OWNER)  # type: ignore[index]
    kube.put("networking.istio.io/v1", "sidecars", stale, manager="remixer-controller")
    settings = ControllerSettings(
        prometheus_url=prom_url, kubernetes_api_url=api_url, max_removed_percent=100
    )
    first = asyncio.run(run_at(settings, sink="kube", data_dir=tmp_path, now=now))
    assert first.outcome == "wrote", first.message
    assert first.deleted == 1
    used: dict[tuple[str, str, tuple[str, ...]], set[str]] = {}
    for group, resource, verb, _namespace, name in kube.authorized:
        key = (group, resource, (name,) if resource == "configmaps" else ())
        used.setdefault(key, set()).add(verb)
    role = next(d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d and d["kind"] == "ClusterRole")
    granted: dict[tuple[str, str, tuple[str, ...]], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource, tuple(rule.get("resourceNames", ()))), set()).update(
                    rule["verbs"]
                )
    assert used == granted
    # And a missing permission fails the run, as it would in the cluster.
    kube.rules = [r for r in kube.rules or [] if "deployments" not in r["resources"]]
    refused = asyncio.run(run_at(settings, sink="kube", data_dir=tmp_path, now=now + 30))
    assert refused.outcome == "source-failure"
    assert "403" in refused.message
    assert "deployments" in refused.message


def test_kube_sink_without_a_cluster_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, out, err = run_cli(
        ["run-once", "--prometheus-url", "http://127.0.0.1:9", "--sink", "kube", "--data-dir", str(tmp_path)],
        capsys,
    )
    assert code == 3
    assert err.count("\n") == 1, err
    assert "no Kubernetes cluster configured" in err
    assert "Traceback" not in out + err


async def test_dry_run_is_a_server_side_dry_run(
    mesh: tuple[str, float], fake_kube: tuple[FakeKube, str], tmp_path: Path
) -> None:
    prom_url, now = mesh
    kube, api_url = fake_kube
    settings = ControllerSettings(prometheus_url=prom_url, kubernetes_api_url=api_url)
    summary = await run_at(settings, sink="kube", data_dir=tmp_path, now=now, dry_run=True)
    assert summary.outcome == "dry-run"
    # frontend, fraud-v2 and the leaves redis-v1 and ledger-v1 (cart and billing are ambiguous in telemetry)
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
    kube.rules = None  # this test speaks as a cluster admin; RBAC has its own test
    sidecar = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "x", "namespace": "n", "labels": {"mine": "1"}},
        "spec": {"egress": [{"hosts": ["a/b"]}]},
    }
    body = json.dumps(sidecar).encode()
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
    assert created["metadata"]["managedFields"][0]["fieldsV1"] == {
        "f:metadata": {"f:labels": {"f:mine": {}}},
        "f:spec": {"f:egress": {}},
    }
    code, same = kube.handle("PATCH", path + "?fieldManager=a", ct, body)
    assert (code, same["metadata"]["resourceVersion"]) == (200, created["metadata"]["resourceVersion"])
    other = body.replace(b"a/b", b"c/d")
    assert kube.handle("PATCH", path + "?fieldManager=b", ct, other)[0] == 409
    code, _ = kube.handle("PATCH", path + "?fieldManager=b&force=true&dryRun=All", ct, other)
    assert code == 200
    assert kube.handle("GET", path, {}, b"")[1]["spec"]["egress"][0]["hosts"] == ["a/b"]
    # Another manager's label (an Update) stays when `a` applies again without it.
    kube.edit(
        "networking.istio.io/v1",
        "sidecars",
        "n",
        "x",
        lambda o: o["metadata"]["labels"].update(team="t"),
        manager="kubectl",
    )
    code, applied = kube.handle("PATCH", path + "?fieldManager=a", ct, body)
    assert applied["metadata"]["labels"] == {"mine": "1", "team": "t"}
    # A field `a` stops applying is removed; the one `kubectl` owns is not.
    without = json.dumps({**sidecar, "metadata": {"name": "x", "namespace": "n"}}).encode()
    code, applied = kube.handle("PATCH", path + "?fieldManager=a", ct, without)
    assert applied["metadata"]["labels"] == {"team": "t"}
    # Names and the CRD schema are validated: 422.
    bad_path = "/apis/networking.istio.io/v1/namespaces/n/sidecars/a..b"
    bad = json.dumps({**sidecar, "metadata": {"name": "a..b", "namespace": "n"}}).encode()
    code, status = kube.handle("PATCH", bad_path + "?fieldManager=a", ct, bad)
    assert (code, status["reason"]) == (422, "Invalid")
    assert "RFC 1123 subdomain" in status["message"]
    wrong = json.dumps({**sidecar, "spec": {"outboundTrafficPolicy": {"mode": "SOMETIMES"}}}).encode()
    assert kube.handle("PATCH", path + "?fieldManager=a", ct, wrong)[0] == 422
    # Deletes honour preconditions.
    current = kube.handle("GET", path, {}, b"")[1]["metadata"]
    stale = json.dumps({"preconditions": {"uid": current["uid"], "resourceVersion": "1"}}).encode()
    code, status = kube.handle("DELETE", path, {}, stale)
    assert (code, status["reason"]) == (409, "Conflict")
    assert kube.handle("DELETE", path + "?dryRun=All", {}, b"")[0] == 200
    exact = json.dumps(
        {"preconditions": {"uid": current["uid"], "resourceVersion": current["resourceVersion"]}}
    )
    assert kube.handle("DELETE", path, {}, exact.encode())[0] == 200
    assert kube.handle("GET", path, {}, b"")[0] == 404
    listed = kube.handle("GET", "/apis/networking.istio.io/v1/sidecars?labelSelector=team%3Dx", {}, b"")[1]
    assert listed["items"] == []
    # RBAC: deploy/'s role does not let the controller read Secrets-like things or get Sidecars one by one.
    kube.rules = FakeKube().rules
    code, status = kube.handle("GET", path, {}, b"")
    assert (code, status["reason"]) == (403, "Forbidden")
    assert 'cannot get resource "sidecars"' in status["message"]


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
            "remixer/*",
            f"data/{fqdn('redis', 'data')}",
            f"pay/{fqdn('billing', 'pay')}",
            f"shop/{fqdn('cart', 'shop')}",
        ]
    )
    skipped = {c.name: c.reason for c in summary.changes if c.action == "skipped" and c.namespace == "pay"}
    assert "selector-less Sidecar (pay-wide)" in skipped["default"]
    # Selector Sidecars still go to pay: Istio prefers them over the namespace-wide one.
    assert "pay/remixer-fraud-v2" in stored


def test_prune_deletes_only_the_version_it_listed(fake_kube: tuple[FakeKube, str]) -> None:
    kube, api_url = fake_kube
    ours = _human_sidecar("shop", "remixer-old", {"app": "old"})
    ours["metadata"]["labels"] = dict(OWNER)  # type: ignore[index]
    kube.put("networking.istio.io/v1", "sidecars", ours, manager="remixer-controller")
    kube.put(
        "networking.istio.io/v1",
        "sidecars",
        {**ours, "metadata": {**ours["metadata"], "name": "remixer-older"}},
    )  # type: ignore[dict-item]
    sink = KubeSink(api_url=api_url, field_manager="remixer-controller", owner_label="a", owner_value="b")
    try:
        assert len(sink.observe()) == 2
        # Between our list and our delete, someone takes remixer-old over (drops our label).
        kube.edit(
            "networking.istio.io/v1",
            "sidecars",
            "shop",
            "remixer-old",
            lambda o: o["metadata"]["labels"].clear(),
            manager="kubectl",
        )
        failures = sink.apply([], [("shop", "remixer-old"), ("shop", "remixer-older")], dry_run=False)
    finally:
        sink.close()
    assert [(f.name, "409" in f.reason and "Precondition failed" in f.reason) for f in failures] == [
        ("remixer-old", True)
    ]
    assert sorted(o["metadata"]["name"] for o in kube.items()) == ["remixer-old"]
