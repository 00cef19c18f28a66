"""Pure core: PromQL escaping, edge extraction, TTL, Sidecar computation, plans, guards, shrink, graph."""

from __future__ import annotations

import json
import re

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core import edges, graph, plans, promql, scopes, shrink
from controller.settings import ControllerSettings, parse_duration
from controller.structs import CallEdge, QueryRow, StoredDependency, WorkloadInfo, WorkloadRef
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


def _specs(active: dict[WorkloadRef, set[str]], infos: dict[WorkloadRef, WorkloadInfo], **overrides: object):  # type: ignore[no-untyped-def]
    return scopes.compute_sidecars(active, infos, ControllerSettings(**overrides))  # type: ignore[arg-type]


def test_sidecars_are_sorted_pinned_and_never_empty() -> None:
    other = WorkloadRef("shop", "idle-v1")
    nolabels = WorkloadRef("shop", "mystery")
    active = {
        wl: {"shop/z.shop.svc.cluster.local", "pay/a.pay.svc.cluster.local"},
        other: set(),
        nolabels: {"x/y"},
    }
    infos = {
        wl: WorkloadInfo(wl, (("app", "frontend"), ("version", "v1"))),
        other: WorkloadInfo(other, (("app", "idle"),)),
    }
    specs, skipped = _specs(
        active, infos, pinned_hosts_by_namespace={"shop": ["shop/pinned.shop.svc.cluster.local"]}
    )
    assert [s.name for s in specs] == ["remixer-frontend-v1"]
    assert specs[0].hosts == (
        "istio-system/*",
        "pay/a.pay.svc.cluster.local",
        "shop/pinned.shop.svc.cluster.local",
        "shop/z.shop.svc.cluster.local",
    )
    assert {str(ref) for ref, _ in skipped} == {"shop/idle-v1", "shop/mystery"}
    manifest = scopes.to_manifest(specs[0], SETTINGS)
    assert_valid_sidecar(manifest)
    assert manifest["spec"]["workloadSelector"]["labels"] == {"app": "frontend", "version": "v1"}


def test_overlapping_selectors_share_one_sidecar_and_default_has_no_selector() -> None:
    v1, v2, plain = WorkloadRef("shop", "web-v1"), WorkloadRef("shop", "web-v2"), WorkloadRef("shop", "web")
    active = {v1: {"a/a"}, v2: {"b/b"}, plain: {"c/c"}}
    infos = {
        v1: WorkloadInfo(v1, (("app", "web"), ("version", "v1"))),
        v2: WorkloadInfo(v2, (("app", "web"), ("version", "v2"))),
        plain: WorkloadInfo(plain, (("app", "web"),)),
    }
    specs, _ = _specs(active, infos, namespace_default_sidecar=True)
    assert [(s.name, s.selector) for s in specs] == [("remixer-web", (("app", "web"),)), ("default", None)]
    assert set(specs[0].hosts) >= {"a/a", "b/b", "c/c"}
    assert "./*" in specs[1].hosts
    for spec in specs:
        assert_valid_sidecar(scopes.to_manifest(spec, SETTINGS))


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
            destination_service=f"{svc}.{dns}.svc.cluster.local",
            destination_service_namespace=dns,
        )
        for sns, swl, dns, svc in calls
    ]
    found, _ = _edges(*rows)
    observed = scopes.observed_dependencies(found, SETTINGS)
    merge = scopes.merge_ttl([], observed, now=0, ttl_seconds=DAY)
    infos = scopes.selectors_from_edges(found)
    first = [
        scopes.to_manifest(s, SETTINGS) for s in scopes.compute_sidecars(merge.active, infos, SETTINGS)[0]
    ]
    again = [
        scopes.to_manifest(s, SETTINGS) for s in scopes.compute_sidecars(merge.active, infos, SETTINGS)[0]
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
    for spec in scopes.compute_sidecars(merge.active, scopes.selectors_from_edges(found), SETTINGS)[0]:
        manifest = scopes.to_manifest(spec, SETTINGS)
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
