"""The Kustomize output (base and every overlay) is valid Kubernetes, least-privilege, and agrees with
remixer's real CLI and settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from remixer import cli
from remixer.settings import Settings, load

from .paths import DEPLOY, KUBERNETES_VERSION, SECRET_STAND_INS, kustomize_build

K8S_TREES = ["kubernetes/base", "kubernetes/overlays/dev", "kubernetes/overlays/production"]
ISTIO_GROUPS = {"networking.istio.io", "security.istio.io", "telemetry.istio.io"}
OPERATOR_GROUP = "monitoring.coreos.com"  # checked in test_alerts (PrometheusRule) and below (PodMonitor)


def group(obj: dict[str, Any]) -> str:
    api = str(obj["apiVersion"])
    return api.split("/")[0] if "/" in api else ""


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objs:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield name, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield name, obj["spec"]["jobTemplate"]["spec"]["template"]


@pytest.fixture(scope="module", params=K8S_TREES)
def built(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return kustomize_build(request.param)


def test_every_core_object_validates_for_the_stated_kubernetes_version(built: list[dict[str, Any]]) -> None:
    checked = 0
    for obj in built:
        if group(obj) in ISTIO_GROUPS or group(obj) == OPERATOR_GROUP:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 10


def test_the_validator_really_rejects_a_misspelt_field() -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "readOnlyRootFS": True}]},
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFS"):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_no_object_kind_escapes_validation(built: list[dict[str, Any]]) -> None:
    operator_kinds = {o["kind"] for o in built if group(o) == OPERATOR_GROUP}
    assert operator_kinds <= {"PodMonitor", "PrometheusRule"}
    assert not [o for o in built if group(o) in ISTIO_GROUPS], "Istio objects live in deploy/istio"


def test_every_namespaced_object_lands_in_the_remixer_namespace(built: list[dict[str, Any]]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in built:
        expected = None if obj["kind"] in cluster_scoped else "remixer"
        assert obj["metadata"].get("namespace") == expected, f"{obj['kind']}/{obj['metadata']['name']}"


def test_podmonitor_scrapes_the_admin_port(built: list[dict[str, Any]]) -> None:
    for mon in (o for o in built if o["kind"] == "PodMonitor"):
        assert mon["apiVersion"] == "monitoring.coreos.com/v1"
        endpoints = mon["spec"]["podMetricsEndpoints"]
        assert [(e["port"], e["path"]) for e in endpoints] == [
            ("http-admin", "/metrics"),
            ("http-metrics", "/metrics"),
        ]
        assert mon["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "remixer"}


def test_rbac_is_exactly_least_privilege(built: list[dict[str, Any]]) -> None:
    roles = [o for o in built if o["kind"] in {"Role", "ClusterRole"}]
    assert [r["metadata"]["name"] for r in roles] == ["remixer-controller"]
    # Exactly the controller's calls (tests/controller/test_kube.py derives them from a run against a fake
    # API server that enforces this role).
    rules = {
        (
            tuple(r["apiGroups"]),
            tuple(sorted(r["resources"])),
            tuple(sorted(r["verbs"])),
            tuple(r.get("resourceNames", ())),
        )
        for r in roles[0]["rules"]
    }
    assert rules == {
        (("networking.istio.io",), ("sidecars",), ("create", "delete", "list", "patch"), ()),
        (("apps",), ("daemonsets", "deployments", "statefulsets"), ("list",), ()),
        (("",), ("pods", "services"), ("list",), ()),
        (("",), ("configmaps",), ("get",), ("istio",)),
    }
    bindings = [o for o in built if o["kind"] in {"RoleBinding", "ClusterRoleBinding"}]
    assert len(bindings) == 1
    assert bindings[0]["subjects"] == [
        {"kind": "ServiceAccount", "name": "remixer-controller", "namespace": "remixer"}
    ]
    # Only the controller's pods may carry an API token.
    for name, template in pod_specs(built):
        spec = template["spec"]
        if spec["serviceAccountName"] != "remixer-controller":
            assert spec.get("automountServiceAccountToken") is False, name


def test_pods_are_hardened_and_sized(built: list[dict[str, Any]]) -> None:
    specs = list(pod_specs(built))
    assert specs
    for name, template in specs:
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert set(container["resources"]["requests"]) == {"cpu", "memory"}, name
            assert set(container["resources"]["limits"]) == {"cpu", "memory"}, name
            # A read-only root needs every written path on a volume.
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/var/lib/remixer", "/tmp"} <= mounts, name


def _serving_deployments(built: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for o in built
        if o["kind"] == "Deployment" and o["metadata"]["name"] in {"remixer-policy", "remixer-telemetry"}
    ]


def test_policy_and_telemetry_scale_separately_with_probes_pdb_and_hpa(built: list[dict[str, Any]]) -> None:
    deployments = _serving_deployments(built)
    assert sorted(d["metadata"]["name"] for d in deployments) == ["remixer-policy", "remixer-telemetry"]
    for dep in deployments:
        name = dep["metadata"]["name"]
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-admin"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-admin"}
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        hpas = [
            o
            for o in built
            if o["kind"] == "HorizontalPodAutoscaler" and o["spec"]["scaleTargetRef"]["name"] == name
        ]
        assert len(hpas) == 1
        assert hpas[0]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpas[0]["spec"]["minReplicas"] == dep["spec"]["replicas"]
        pdbs = [
            o
            for o in built
            if o["kind"] == "PodDisruptionBudget"
            and o["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        ]
        assert len(pdbs) == 1, name


def test_services_name_ports_for_istio_protocol_selection(built: list[dict[str, Any]]) -> None:
    services = [o for o in built if o["kind"] == "Service"]
    assert sorted(s["metadata"]["name"] for s in services) == ["remixer-policy", "remixer-telemetry"]
    by_name = {d["metadata"]["name"]: d for d in _serving_deployments(built)}
    for svc in services:
        dep = by_name[svc["metadata"]["name"]]
        assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        container_ports = {
            p["name"]: p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        for port in svc["spec"]["ports"]:
            # Istio picks the protocol from the port name prefix (grpc-, http-) or appProtocol.
            prefix = port["name"].split("-")[0]
            assert prefix in {"grpc", "http"}, port
            assert port["appProtocol"] == prefix, port
            assert container_ports[port["targetPort"]] == port["port"], port
    policy_ports = {
        p["port"]
        for p in next(s for s in services if s["metadata"]["name"] == "remixer-policy")["spec"]["ports"]
    }
    assert policy_ports == {9191, 9192, 8080}


def test_controller_runs_as_a_cronjob_with_its_own_account(built: list[dict[str, Any]]) -> None:
    cron = next(o for o in built if o["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "remixer-controller"
    args = spec["containers"][0]["args"]
    assert args[0] == "controller"
    assert "run-once" in args
    assert args[args.index("--sink") + 1] == "kube"


# ---- the manifests agree with the real CLI and settings --------------------------------------------------


def _config_file(built: list[dict[str, Any]], tmp_path: Path) -> Path:
    config_maps = [
        o for o in built if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("remixer-config")
    ]
    assert len(config_maps) == 1
    path = tmp_path / "remixer.yaml"
    path.write_text(config_maps[0]["data"]["remixer.yaml"])
    return path


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            key = var["valueFrom"]["secretKeyRef"]["key"]
            assert var["valueFrom"]["secretKeyRef"]["name"] == "remixer-secrets"
            env[var["name"]] = SECRET_STAND_INS[key]
    return env


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("REMIXER_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("REMIXER_")]:
            del os.environ[key]
        os.environ.update(saved)


def test_every_container_command_parses_with_the_real_cli_and_its_settings_load(
    built: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = _config_file(built, tmp_path)
    parser = cli.build_parser()
    for name, template in pod_specs(built):
        container = template["spec"]["containers"][0]
        mounted = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/etc/remixer" in mounted, name
        args = [
            str(tmp_path / "remixer.yaml") if a == "/etc/remixer/remixer.yaml" else a
            for a in container["args"]
        ]
        parser.parse_args(args)
        with _environ(_container_env(container)):
            settings = load(config)
        if name == "Deployment/remixer-policy":
            assert settings.server.parts == ["policy", "admin"]
            assert settings.policy.http_address.endswith(":9192")
        if name == "Deployment/remixer-telemetry":
            assert settings.server.parts == ["telemetry", "admin"]
        assert settings.server.grpc_address == "0.0.0.0:9191"
        assert settings.server.admin_address == "0.0.0.0:8080"
        assert settings.server.admin_token is not None or name.startswith(
            ("CronJob", "Deployment/remixer-controller")
        )


def test_configmap_holds_only_values_that_differ_from_the_defaults() -> None:
    data = yaml.safe_load((DEPLOY / "kubernetes/base/remixer.yaml").read_text())
    defaults = Settings().model_dump(mode="json")

    def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    for dotted, value in leaves(data):
        default: Any = defaults
        for part in dotted.split("."):
            default = default[part]
        assert str(value) != str(default), f"{dotted} repeats its default"


def test_in_production_the_controller_reads_the_call_edges_telemetry_writes() -> None:
    built = kustomize_build("kubernetes/overlays/production")

    def secret_key(name: str, var: str) -> str:
        for pod_name, template in pod_specs(built):
            if pod_name == name:
                env = {e["name"]: e for e in template["spec"]["containers"][0].get("env", [])}
                return str(env[var]["valueFrom"]["secretKeyRef"]["key"])
        raise AssertionError(name)

    written = secret_key("Deployment/remixer-telemetry", "REMIXER_TELEMETRY__CALL_EDGES__DATABASE_URL")
    read = secret_key("CronJob/remixer-controller", "REMIXER_CONTROLLER__CALL_EDGES_DATABASE_URL")
    assert written == read == "call-edges-database-url"


def test_shutdown_fits_the_grace_period_after_a_prestop_delay(
    built: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Kubernetes sends SIGTERM after preStop, and kills at terminationGracePeriodSeconds counted from the
    start of preStop: the endpoint's removal must reach the Envoys during the delay, and remixer's whole
    drain (serve on, in-flight grace, the shipper's last flush) must fit in what is left."""
    config = _config_file(built, tmp_path)
    for deployment in _serving_deployments(built):
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        delay = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert delay >= 3, deployment["metadata"]["name"]
        with _environ(_container_env(container)):
            settings = load(config)
        server, kafka = settings.server, settings.shipping.kafka
        drain = server.drain_seconds + server.stop_grace_s + kafka.send_timeout_s + 5
        assert delay + drain < spec["terminationGracePeriodSeconds"], deployment["metadata"]["name"]
