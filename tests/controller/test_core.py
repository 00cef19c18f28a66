"""Pure core: PromQL escaping, edge extraction, TTL, Sidecar computation, plans, guards, shrink, graph."""

from __future__ import annotations

import json
import re

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core import edges, graph, meshconfig, names, plans, promql, scopes, selectors, shrink
from controller.settings import ControllerSettings, parse_duration
from controller.structs import CallEdge, QueryRow, SidecarSpec, StoredDependency, WorkloadInfo, WorkloadRef
from tests.controller.conftest import assert_valid_sidecar

SETTINGS = ControllerSettings()
DAY = 86400.0


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\":
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


@given(st.text())
def test_escaped_label_values_round_trip_and_never_close_the_string(value: str) -> None:
    escaped = promql.escape_value(value)
    assert _unescape(escaped) == value
    assert "\n" not in escaped
    assert re.fullmatch(r'(?:[^"\\]|\\.)*', escaped, flags=re.S)


def test_queries_are_kiali_shaped_and_escape_namespaces_and_selector() -> None:
    queries = promql.build_queries(
        window="1h", namespaces=["shop", 'we"ird'], extra={"source_cluster": "a\nb"}
    )
    kinds = [(q.kind, q.reporter) for q in queries]
    assert kinds[0] == ("requests", "source")
    assert {("requests", "destination"), ("tcp_sent", "source"), ("tcp_received", "destination")} <= set(
        kinds
    )
    first = queries[0].promql
    assert first.startswith("sum by (source_workload_namespace,source_workload,")
    assert 'reporter="source"' in first
    assert "[1h]" in first
    assert first.endswith("> 0")
    assert 'source_cluster="a\\nb"' in first
    assert 'source_workload_namespace=~"shop|we\\"ird"' in first


def test_bad_label_name_in_selector_is_rejected() -> None:
    with pytest.raises(ValueError, match="label name"):
        promql.build_queries(window="1h", extra={"bad-name": "x"})


def _row(**labels: str) -> QueryRow:
    base = {
        "source_workload_namespace": "shop",
        "source_workload": "frontend-v1",
        "source_app": "frontend",
        "source_version": "v1",
        "destination_service": "cart.shop.svc.cluster.local",
        "destination_service_namespace": "shop",
        "destination_workload": "cart-v1",
        "destination_workload_namespace": "shop",
        "destination_app": "cart",
        "destination_version": "v1",
        "request_protocol": "http",
    }
    return QueryRow({**base, **labels}, 1.0)


def _edges(*rows: QueryRow, reporter: str = "source") -> tuple[list[CallEdge], edges.RowStats]:
    stats = edges.RowStats()
    found = edges.edges_from_rows(
        rows,
        reporter=reporter,
        protocol="http",
        cluster_domain="cluster.local",
        stats=stats,  # type: ignore[arg-type]
    )
    return found, stats


def test_unknown_and_bad_telemetry_follow_kiali() -> None:
    found, stats = _edges(
        _row(),
        _row(source_workload_namespace="unknown", source_workload="unknown"),
        _row(source_workload="unknown", source_app="unknown"),  # namespace known, workload not: bad
        _row(destination_service="PassthroughCluster", destination_service_namespace="unknown"),
        _row(destination_service="10.0.0.7:8080", destination_service_namespace="unknown"),
        _row(destination_service="api.example.com", destination_service_namespace="unknown"),
        _row(source_workload='evil"\nx'),
    )
    assert stats.bad_source == 2
    scopable = sorted((str(e.source), e.destination_host) for e in found if edges.is_scopable(e))
    assert scopable == [
        ("shop/frontend-v1", "*/api.example.com"),
        ("shop/frontend-v1", "shop/cart.shop.svc.cluster.local"),
    ]
    assert any(e.source == edges.UNKNOWN_SOURCE for e in found)
    assert any(e.destination_host == "PassthroughCluster" for e in found)


def test_source_reporter_wins_and_destination_fills_in() -> None:
    source, _ = _edges(_row())
    destination, _ = _edges(
        _row(), _row(source_workload="legacy-v1", source_app="legacy"), reporter="destination"
    )
    merged = edges.merge_reporters(source, destination)
    assert [(str(e.source), e.reporter) for e in merged] == [
        ("shop/frontend-v1", "source"),
        ("shop/legacy-v1", "destination"),
    ]


wl = WorkloadRef("shop", "frontend-v1")


def test_ttl_keeps_unseen_hosts_until_the_ttl_ends() -> None:
    stored = [
        StoredDependency(wl, "shop/a.shop.svc.cluster.local", 0.0, 10 * DAY),
        StoredDependency(wl, "shop/b.shop.svc.cluster.local", 0.0, 4 * DAY),
    ]
    merge = scopes.merge_ttl(
        stored, {(wl, "shop/c.shop.svc.cluster.local")}, now=10.5 * DAY, ttl_seconds=7 * DAY
    )
    assert merge.active[wl] == {
        "shop/a.shop.svc.cluster.local",
        "shop/b.shop.svc.cluster.local",
        "shop/c.shop.svc.cluster.local",
    }
    merge = scopes.merge_ttl(stored, set(), now=11.5 * DAY, ttl_seconds=7 * DAY)
    assert [d.host for d in merge.expired] == ["shop/b.shop.svc.cluster.local"]
    assert merge.active[wl] == {"shop/a.shop.svc.cluster.local"}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 20 * DAY)),
        max_size=6,
        unique_by=lambda t: t[0],
    ),
    st.sets(st.sampled_from(["a", "b", "c", "d"])),
    st.floats(0, 30 * DAY),
)
def test_ttl_never_drops_a_host_seen_within_the_ttl(stored_raw, seen_raw, now) -> None:  # type: ignore[no-untyped-def]
    stored = [StoredDependency(wl, f"ns/{h}", 0.0, last) for h, last in stored_raw]
    merge = scopes.merge_ttl(stored, {(wl, f"ns/{h}") for h in seen_raw}, now=now, ttl_seconds=7 * DAY)
    active = merge.active.get(wl, set())
    for dep in stored:
        assert (dep.host in active) == (now - dep.last_seen <= 7 * DAY or dep.host[3:] in seen_raw)
    assert {f"ns/{h}" for h in seen_raw} <= active


REQUIRED = scopes.required_hosts(SETTINGS)
CANONICAL = scopes.CANONICAL_NAME, scopes.CANONICAL_REVISION


def _specs(active: dict[WorkloadRef, set[str]], infos: dict[WorkloadRef, WorkloadInfo], **overrides: object):  # type: ignore[no-untyped-def]
    return scopes.compute_sidecars(
        active,
        infos,
        ControllerSettings(**overrides),
        required=REQUIRED,  # type: ignore[arg-type]
    )


def _injected(ref: WorkloadRef, name: str, revision: str = "v1") -> WorkloadInfo:
    return WorkloadInfo(ref, ((CANONICAL[0], name), (CANONICAL[1], revision)))


def test_every_workload_gets_a_scope_leaves_included_with_the_required_hosts() -> None:
    leaf = WorkloadRef("shop", "idle-v1")
    nolabels = WorkloadRef("shop", "mystery")
    active = {
        wl: {"shop/z.shop.svc.cluster.local", "pay/a.pay.svc.cluster.local"},
        leaf: set(),
        nolabels: {"x/y"},
    }
    infos = {wl: _injected(wl, "frontend"), leaf: _injected(leaf, "idle")}
    specs, skipped = _specs(
        active, infos, pinned_hosts_by_namespace={"shop": ["shop/pinned.shop.svc.cluster.local"]}
    )
    assert [s.name for s in specs] == ["remixer-frontend-v1", "remixer-idle-v1"]
    assert specs[0].hosts == (
        "istio-system/*",
        "pay/a.pay.svc.cluster.local",
        "remixer/*",
        "shop/pinned.shop.svc.cluster.local",
        "shop/z.shop.svc.cluster.local",
    )
    # A leaf calls nothing: only what every scope has.
    assert specs[1].hosts == ("istio-system/*", "remixer/*", "shop/pinned.shop.svc.cluster.local")
    assert [(str(ref), why) for ref, why in skipped] == [("shop/mystery", "no pod labels known to select it")]
    manifest = scopes.to_manifest(specs[0], SETTINGS, required=REQUIRED)
    assert_valid_sidecar(manifest)
    assert manifest["spec"]["workloadSelector"]["labels"] == {CANONICAL[0]: "frontend", CANONICAL[1]: "v1"}
    assert manifest["spec"]["outboundTrafficPolicy"] == {"mode": "ALLOW_ANY"}
    strict = ControllerSettings(outbound_traffic_policy="REGISTRY_ONLY")
    assert scopes.to_manifest(specs[0], strict, required=REQUIRED)["spec"]["outboundTrafficPolicy"] == {
        "mode": "REGISTRY_ONLY"
    }


@given(
    st.sets(st.from_regex(r"[a-z]{1,3}/[a-z.*]{1,5}", fullmatch=True), max_size=5),
    st.sets(st.from_regex(r"[a-z]{1,3}/[a-z.*]{1,5}", fullmatch=True), max_size=3),
    st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
)
def test_the_control_plane_and_remixer_are_in_every_manifest(hosts, providers, plane, home) -> None:  # type: ignore[no-untyped-def]
    configured = ControllerSettings(control_plane_namespace=plane, remixer_namespace=home)
    required = scopes.required_hosts(configured, providers)
    assert {f"{plane}/*", f"{home}/*", *providers} <= required
    # Whatever spec reaches to_manifest (even one built by hand without them), the output has them.
    spec = SidecarSpec("shop", "remixer-x", (("a", "b"),), tuple(sorted(hosts)), ("x",))
    written = set(scopes.to_manifest(spec, configured, required=required)["spec"]["egress"][0]["hosts"])
    assert required <= written
    assert hosts <= written


def test_mesh_extension_providers_become_pinned_hosts() -> None:
    # istio/api mesh/v1alpha1/config.proto: service is "[<Namespace>/]<Hostname>".
    mesh = {
        "extensionProviders": [
            {
                "name": "authz",
                "envoyExtAuthzGrpc": {"service": "remixer-policy.sec.svc.cluster.local", "port": 9191},
            },
            {"name": "als", "envoyHttpAls": {"service": "logs/collector.example.com", "port": 9191}},
            {"name": "otel", "opentelemetry": {"service": "otel.example.com", "port": 4317}},
            {"name": "bad", "envoyTcpAls": {"service": "Not A Host", "port": 1}},
            {"name": "file", "envoyFileAccessLog": {"path": "/dev/stdout"}},
        ]
    }
    assert meshconfig.provider_hosts(mesh, "cluster.local") == {
        "sec/remixer-policy.sec.svc.cluster.local",
        "logs/collector.example.com",
        "*/otel.example.com",
    }
    assert meshconfig.provider_hosts({}, "cluster.local") == set()


def test_equal_or_nested_selectors_are_skipped_and_named_never_guessed() -> None:
    v1, v2, web, other = (WorkloadRef("shop", n) for n in ("web-v1", "web-v2", "web", "api"))
    infos = {
        v1: _injected(v1, "web", "v1"),
        # A canonical-name override: web-v2's pods carry the same name and revision as web-v1's.
        v2: _injected(v2, "web", "v1"),
        web: WorkloadInfo(web, ((CANONICAL[0], "web"),)),
        other: _injected(other, "api"),
    }
    resolved = scopes.without_ambiguity(infos)
    assert resolved[other] == infos[other]
    for ref in (v1, v2, web):
        assert resolved[ref].selector == ()
    assert "web-v1, web-v2" in resolved[web].problem
    specs, skipped = _specs({ref: {"a/a"} for ref in infos}, resolved)
    assert [s.name for s in specs] == ["remixer-api"]
    assert {str(ref) for ref, _ in skipped} == {"shop/web", "shop/web-v1", "shop/web-v2"}


def test_a_namespace_default_has_no_selector_and_covers_the_namespace() -> None:
    a, b = WorkloadRef("shop", "a"), WorkloadRef("shop", "b")
    specs, _ = _specs(
        {a: {"x/x"}, b: {"y/y"}}, {a: _injected(a, "a"), b: _injected(b, "b")}, namespace_default_sidecar=True
    )
    assert [(s.name, s.selector is None) for s in specs] == [
        ("remixer-a", False),
        ("remixer-b", False),
        ("default", True),
    ]
    assert {"./*", "x/x", "y/y", *REQUIRED} <= set(specs[2].hosts)
    for spec in specs:
        assert_valid_sidecar(scopes.to_manifest(spec, SETTINGS, required=REQUIRED))


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_object_names_are_always_valid_and_fit_a_file_name(workload: str) -> None:
    name = scopes.sidecar_name("remixer-", workload)
    assert names.is_dns_subdomain(name)
    assert len(name) <= names.MAX_NAME
    assert len((name + ".yaml.tmp").encode()) <= 255
    if names.is_dns_subdomain("remixer-" + workload) and len("remixer-" + workload) <= names.MAX_NAME:
        assert name == "remixer-" + workload


def test_names_the_api_server_would_refuse_are_made_valid_and_stay_distinct() -> None:
    made = {
        w: scopes.sidecar_name("remixer-", w) for w in ("a..b", "a.-b", "a.b", "A.B", "x" * 243, "x" * 244)
    }
    assert made["a.b"] == "remixer-a.b"
    assert len(set(made.values())) == len(made)
    for name in made.values():
        assert names.is_dns_subdomain(name), name


def test_pods_are_named_after_their_workload_as_istio_does() -> None:
    # istio/istio pkg/kube/util.go GetDeployMetaFromPod.
    hashed = {"pod-template-hash": "5d9f8c7b6"}
    assert (
        selectors.pod_workload("web-5d9f8c7b6-x2x", "web-5d9f8c7b6-", hashed, ("ReplicaSet", "web-5d9f8c7b6"))
        == "web"
    )
    assert selectors.pod_workload("db-0", "db-", {}, ("StatefulSet", "db")) == "db"
    assert (
        selectors.pod_workload("nightly-28990000-abc", "nightly-28990000-", {}, ("Job", "nightly-28990000"))
        == "nightly"
    )
    assert selectors.pod_workload("debug", "", {}, None) == "debug"


def test_kube_selectors_select_exactly_one_workload_s_pods() -> None:
    def owner(name: str, match: dict[str, str], template: dict[str, str]) -> selectors.PodTemplateOwner:
        return selectors.PodTemplateOwner(
            WorkloadRef("shop", name), tuple(sorted(match.items())), tuple(sorted(template.items()))
        )

    owners = [
        owner("web", {"app": "web"}, {"app": "web", "track": "stable"}),
        owner("web-canary", {"app": "web", "track": "canary"}, {"app": "web", "track": "canary"}),
        owner("twin-a", {"team": "x"}, {"team": "x"}),
        owner("twin-b", {"team": "x"}, {"team": "x"}),
    ]
    pods = [
        selectors.PodLabels("shop", "web", (("app", "web"), ("track", "stable"))),
        selectors.PodLabels("shop", "web-canary", (("app", "web"), ("track", "canary"))),
    ]
    injected = (
        ("service.istio.io/canonical-name", "nightly"),
        ("service.istio.io/canonical-revision", "latest"),
    )
    pods += [
        # Two runs of a CronJob: their job labels differ per run, the injector's labels do not.
        selectors.PodLabels(
            "shop", "nightly", (*injected, ("job-name", f"nightly-2899000{i}"), ("app", "batch"))
        )
        for i in range(2)
    ]
    pods.append(selectors.PodLabels("shop", "debug", (("app", "web"),)))  # a bare pod inside app=web
    found = selectors.exact_selectors(owners, pods)
    assert found[WorkloadRef("shop", "nightly")].selector == injected
    assert found[WorkloadRef("shop", "debug")].selector == ()
    assert "web" in found[WorkloadRef("shop", "debug")].problem
    # app=web would also select the canary's pods: the full template is used instead.
    assert found[WorkloadRef("shop", "web")].selector == (("app", "web"), ("track", "stable"))
    assert found[WorkloadRef("shop", "web-canary")].selector == (("app", "web"), ("track", "canary"))
    assert found[WorkloadRef("shop", "twin-a")].selector == ()
    assert "twin-b" in found[WorkloadRef("shop", "twin-a")].problem


def _manifest(
    name: str, hosts: list[str], *, owned: bool = True, selector: dict[str, str] | None = None
) -> dict:  # type: ignore[type-arg]
    labels = {SETTINGS.owner_label: SETTINGS.owner_value} if owned else {"team": "people"}
    spec: dict = {"egress": [{"hosts": hosts}]}  # type: ignore[type-arg]
    if selector is not None:
        spec["workloadSelector"] = {"labels": selector}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": spec,
    }


def test_plan_writes_only_changes_prunes_only_ours_and_respects_people() -> None:
    observed = [
        _manifest("remixer-a", ["x/x"], selector={"app": "a"}),
        _manifest("remixer-gone", ["y/y"], selector={"app": "gone"}),
        _manifest("theirs", ["z/z"], owned=False, selector={"app": "c"}),
    ]
    desired = [
        _manifest("remixer-a", ["x/x"], selector={"app": "a"}),
        _manifest("remixer-b", ["w/w"], selector={"app": "b"}),
        _manifest("remixer-c", ["v/v"], selector={"app": "c", "version": "v1"}),
    ]
    plan = plans.make_plan(
        desired, observed, owner_label=SETTINGS.owner_label, owner_value=SETTINGS.owner_value
    )
    actions = {c.name: c.action for c in plan.changes}
    assert actions == {
        "remixer-a": "unchanged",
        "remixer-b": "create",
        "remixer-c": "skipped",
        "remixer-gone": "delete",
    }
    assert [m["metadata"]["name"] for m in plan.to_write] == ["remixer-b"]
    assert plan.to_delete == (("shop", "remixer-gone"),)
    assert (plan.hosts_before, plan.hosts_removed) == (2, 1)
    assert plans.removal_refusal(plan, max_percent=20, force=False)
    assert plans.removal_refusal(plan, max_percent=20, force=True) is None


def test_the_per_workload_guard_names_the_workloads_a_large_mesh_would_hide() -> None:
    many = [f"h/{i}" for i in range(7)]
    observed = [_manifest("remixer-a", many, selector={"app": "a"})] + [
        _manifest(f"remixer-n{i}", [f"n/{j}" for j in range(10)], selector={"app": f"n{i}"})
        for i in range(20)
    ]
    desired = [_manifest("remixer-a", many[:3], selector={"app": "a"}), *observed[1:]]
    desired[0]["metadata"]["annotations"] = {"remixer.io/workloads": "a-v1"}
    plan = plans.make_plan(
        desired, observed, owner_label=SETTINGS.owner_label, owner_value=SETTINGS.owner_value
    )
    # 4 of 207 hosts mesh-wide passes the 20% guard; 4 of a's 7 does not pass the per-workload 50%.
    assert plans.removal_refusal(plan, max_percent=20, force=False) is None
    refusal = plans.removal_refusal(plan, max_percent=20, max_percent_per_workload=50, force=False)
    assert refusal is not None
    assert "shop/a-v1 (4 of 7)" in refusal
    assert plans.removal_refusal(plan, max_percent=20, max_percent_per_workload=60, force=False) is None
    assert plans.removal_refusal(plan, max_percent=20, max_percent_per_workload=50, force=True) is None


def test_fields_other_managers_own_never_cause_an_update() -> None:
    desired = _manifest("remixer-a", ["x/x"], selector={"app": "a"})
    manager = "remixer-controller"
    current = json.loads(json.dumps(desired))
    # As the API server stores it after our apply and someone else's label (kubectl label, Argo CD).
    current["metadata"]["labels"]["argocd.argoproj.io/instance"] = "mesh"
    current["metadata"]["managedFields"] = [
        {"manager": manager, "operation": "Apply", "fieldsV1": plans.fields_of(desired)},
        {
            "manager": "argocd",
            "operation": "Update",
            "fieldsV1": {"f:metadata": {"f:labels": {"f:argocd.argoproj.io/instance": {}}}},
        },
    ]
    assert not plans.needs_write(current, desired, manager)
    changed = json.loads(json.dumps(desired))
    changed["spec"]["egress"][0]["hosts"] = ["x/x", "y/y"]
    assert plans.needs_write(current, changed, manager)
    # A field we applied before and no longer do would be removed by the apply: that is a change.
    fewer = json.loads(json.dumps(desired))
    del fewer["metadata"]["labels"]
    assert plans.needs_write(current, fewer, manager)


def test_volume_guard() -> None:
    assert plans.volume_refusal(edges=0, last_edges=None, min_ratio=0.5)
    assert plans.volume_refusal(edges=4, last_edges=10, min_ratio=0.5)
    assert plans.volume_refusal(edges=5, last_edges=10, min_ratio=0.5) is None
    assert plans.volume_refusal(edges=1, last_edges=None, min_ratio=0.5) is None


_name = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_name, _name, _name, _name), min_size=1, max_size=30))
def test_same_input_gives_same_objects_and_a_second_plan_is_empty(calls) -> None:  # type: ignore[no-untyped-def]
    rows = [
        _row(
            source_workload_namespace=sns,
            source_workload=swl,
            source_app=swl,
            source_canonical_service=swl,
            source_canonical_revision="v1",
            destination_service=f"{svc}.{dns}.svc.cluster.local",
            destination_service_namespace=dns,
        )
        for sns, swl, dns, svc in calls
    ]
    found, _ = _edges(*rows)
    observed = scopes.observed_dependencies(found, SETTINGS)
    merge = scopes.merge_ttl([], observed, now=0, ttl_seconds=DAY)
    infos = scopes.without_ambiguity(scopes.selectors_from_telemetry(found))
    first = [
        scopes.to_manifest(s, SETTINGS, required=REQUIRED)
        for s in scopes.compute_sidecars(merge.active, infos, SETTINGS, required=REQUIRED)[0]
    ]
    again = [
        scopes.to_manifest(s, SETTINGS, required=REQUIRED)
        for s in scopes.compute_sidecars(merge.active, infos, SETTINGS, required=REQUIRED)[0]
    ]
    assert json.dumps(first) == json.dumps(again)
    for manifest in first:
        assert_valid_sidecar(manifest)
        assert hosts_sorted(manifest)
    plan = plans.make_plan(first, first, owner_label=SETTINGS.owner_label, owner_value=SETTINGS.owner_value)
    assert (plan.to_write, plan.to_delete) == ((), ())


def hosts_sorted(manifest: dict) -> bool:  # type: ignore[type-arg]
    listed = manifest["spec"]["egress"][0]["hosts"]
    return bool(listed == sorted(set(listed)))


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(promql.REQUEST_GROUP_BY)), st.text(max_size=40)))
def test_arbitrary_label_values_never_reach_a_manifest_invalid(labels: dict[str, str]) -> None:
    found, _ = _edges(QueryRow(labels, 1.0))
    merge = scopes.merge_ttl([], scopes.observed_dependencies(found, SETTINGS), now=0, ttl_seconds=DAY)
    infos = scopes.without_ambiguity(scopes.selectors_from_telemetry(found))
    for spec in scopes.compute_sidecars(merge.active, infos, SETTINGS, required=REQUIRED)[0]:
        manifest = scopes.to_manifest(spec, SETTINGS, required=REQUIRED)
        assert_valid_sidecar(manifest)
        for host in manifest["spec"]["egress"][0]["hosts"]:
            assert re.fullmatch(r"[a-z0-9*.-]+/[a-z0-9*.-]+", host), host


def test_shrink_estimate_for_a_400_service_mesh_with_fan_out_5() -> None:
    services = {
        f"ns{i % 20}/s{i}.ns{i % 20}.svc.cluster.local": shrink.ServiceInfo(
            f"ns{i % 20}/s{i}.ns{i % 20}.svc.cluster.local"
        )
        for i in range(400)
    }
    names = sorted(services)
    services["istio-system/istiod.istio-system.svc.cluster.local"] = shrink.ServiceInfo(
        "istio-system/istiod.istio-system.svc.cluster.local"
    )
    specs = [
        scopes.SidecarSpec(
            "ns0",
            f"w{i}",
            (("app", f"w{i}"),),
            tuple(["istio-system/*", *(names[(i + k) % 400] for k in range(5))]),
            (f"w{i}",),
        )
        for i in range(400)
    ]
    estimate = shrink.estimate(specs, services, workloads=400)
    assert estimate.clusters_before == 400 * 401
    assert estimate.clusters_after == 400 * 6
    assert estimate.cluster_reduction >= 0.95


def test_graph_views_and_exports() -> None:
    found, _ = _edges(
        _row(),
        _row(
            source_workload="cart-v1",
            source_app="cart",
            destination_service="db.data.svc.cluster.local",
            destination_service_namespace="data",
            destination_workload="db-v1",
            destination_workload_namespace="data",
            destination_app="db",
        ),
        _row(source_workload_namespace="unknown", source_workload="unknown"),
    )
    workload = graph.build_view(found, "workload")
    assert {"wl_shop_frontend-v1", "wl_shop_cart-v1", "wl_data_db-v1", "unknown_source"} <= set(
        workload.nodes
    )
    service = graph.build_view(found, "service")
    assert service.has_edge("svc_shop_cart.shop.svc.cluster.local", "svc_data_db.data.svc.cluster.local")
    app = graph.build_view(found, "app")
    assert app.has_edge("app_shop_frontend", "app_shop_cart")
    vapp = graph.build_view(found, "versionedApp", namespace="data")
    assert set(vapp.nodes) == {"vapp_shop_cart_v1", "vapp_data_db_v1"}
    parsed = json.loads(graph.to_json(workload))
    assert {e["source"] for e in parsed["edges"]} >= {"wl_shop_frontend-v1", "unknown_source"}
    assert graph.to_dot(workload).startswith('digraph "workload" {')
    reread = nx.parse_graphml(graph.to_graphml(workload), force_multigraph=True)
    assert set(reread.nodes) == set(workload.nodes)


def test_durations() -> None:
    assert (parse_duration("5m"), parse_duration("7d")) == (300, 7 * DAY)
    for bad in ("", "5", "0s", "1h30m", "-1s"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_short_service_names_are_completed_like_kubernetes_dns() -> None:
    def host(service: str, namespace: str | None = None, source: str | None = "shop") -> str | None:
        return edges.service_host(service, namespace, "cluster.local", source)

    assert host("reviews") == "shop/reviews.shop.svc.cluster.local"
    assert host("reviews", source=None) is None
    assert host("reviews", "books") == "books/reviews.books.svc.cluster.local"
    assert host("reviews.books.svc") == "books/reviews.books.svc.cluster.local"
    assert host("reviews.books", "books") == "books/reviews.books.svc.cluster.local"
    assert edges.service_host("reviews.books", None, "cluster.local", "shop", {"books"}) == (
        "books/reviews.books.svc.cluster.local"
    )
    assert host("reviews.books.svc.cluster.local") == "books/reviews.books.svc.cluster.local"
    assert host("example.com") == "*/example.com"
    assert host("api.example.com", "egress") == "egress/api.example.com"
    assert host("10.0.0.1") is None
    assert host("PassthroughCluster") is None
    assert host("bad name") is None


def test_names_with_a_trailing_newline_are_not_names() -> None:
    from controller.core import edges, promql

    assert edges.is_namespace("shop")
    assert not edges.is_namespace("shop\n")
    assert edges.is_fqdn("a.shop.svc")
    assert not edges.is_fqdn("a.shop.svc\n")
    assert edges.is_label_value("v1")
    assert not edges.is_label_value("v1\n")
    assert edges.is_workload_name("cart-v1")
    assert not edges.is_workload_name("cart-v1\n")
    with pytest.raises(ValueError, match="not a Prometheus label name"):
        promql.matcher("app\n", "=", "x")
