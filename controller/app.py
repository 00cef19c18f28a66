"""Composition: settings -> concrete adapters -> Reconciler; and the admin router (graph API and page)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse, Response

from controller.adapters.base import MetricsSource, SidecarSink
from controller.adapters.files import DirSink, StdoutSink
from controller.adapters.kubernetes import KubeSink
from controller.adapters.metrics import ControllerMetrics
from controller.adapters.prometheus import PrometheusSource
from controller.adapters.sql import CallEdgeReader, DependencyStore, default_url
from controller.core import graph
from controller.errors import ControllerError, UsageError
from controller.reconciling import Observation, Reconciler, observe_sources
from controller.settings import ControllerSettings

GRAPH_PAGE = Path(__file__).with_name("graph.html")
MEDIA_TYPES = {"json": "application/json", "dot": "text/vnd.graphviz", "graphml": "application/xml"}


def parse_sink(spec: str) -> tuple[str, Path | None]:
    if spec in ("kube", "stdout"):
        return spec, None
    if spec.startswith("dir:") and len(spec) > 4:
        return "dir", Path(spec[4:])
    raise UsageError(f"--sink {spec!r}: use dir:PATH, kube or stdout")


def make_sink(spec: str, settings: ControllerSettings) -> SidecarSink:
    kind, path = parse_sink(spec)
    if kind == "dir" and path is not None:
        return DirSink(path)
    if kind == "stdout":
        return StdoutSink()
    return KubeSink(
        api_url=settings.kubernetes_api_url,
        field_manager=settings.field_manager,
        owner_label=settings.owner_label,
        owner_value=settings.owner_value,
        control_plane_namespace=settings.control_plane_namespace,
        mesh_config_map=settings.mesh_config_map,
    )


def make_source(settings: ControllerSettings) -> PrometheusSource:
    return PrometheusSource(
        settings.prometheus_url,
        timeout=settings.prometheus_timeout_seconds,
        retries=settings.prometheus_retries,
    )


@dataclass(slots=True)
class Composition:
    reconciler: Reconciler
    store: DependencyStore
    closers: list[Callable[[], Any]] = field(default_factory=list)

    async def close(self) -> None:
        for close in self.closers:
            result = close()
            if asyncio.iscoroutine(result):
                await result


async def compose(
    settings: ControllerSettings,
    *,
    sink_spec: str,
    data_dir: Path,
    namespaces: list[str] | None = None,
    registry: Any = None,
) -> Composition:
    store = DependencyStore(settings.database_url or default_url(data_dir))
    await store.migrate()
    closers: list[Callable[[], Any]] = [store.close]
    call_edges: CallEdgeReader | None = None
    telemetry_default = data_dir / "edges.db"
    edges_url = settings.call_edges_database_url or (
        f"sqlite:///{telemetry_default}" if telemetry_default.exists() else None
    )
    if edges_url:
        other = DependencyStore(edges_url, schema=settings.call_edges_schema)
        call_edges = CallEdgeReader(other.engine, settings.call_edges_schema)
        closers.append(other.close)
    source = make_source(settings)
    closers.append(source.close)
    sink = make_sink(sink_spec, settings)
    inventory = sink if isinstance(sink, KubeSink) else None
    if inventory is not None:
        closers.append(inventory.close)
    reconciler = Reconciler(
        settings=settings,
        metrics_source=source,
        store=store,
        sink=sink,
        call_edges=call_edges,
        inventory=inventory,
        observer=ControllerMetrics(registry) if registry is not None else None,
        namespaces=namespaces or None,
    )
    return Composition(reconciler, store, closers)


@dataclass(slots=True)
class GraphCache:
    """Recent observations per namespace filter, so a page reload does not re-run every query."""

    settings: ControllerSettings
    source: MetricsSource
    max_age: float = 10.0
    _entries: dict[str, tuple[float, Observation]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def observation(self, namespace: str | None) -> Observation:
        key = namespace or ""
        async with self._lock:
            cached = self._entries.get(key)
            now = time.time()
            if cached and now - cached[0] < self.max_age:
                return cached[1]
            found = await observe_sources(
                settings=self.settings,
                metrics_source=self.source,
                call_edges=None,
                now=now,
                # The graph of a namespace needs calls into it too, so never filter the query by source.
                namespaces=[],
            )
            self._entries[key] = (now, found)
            return found


def admin_router(settings: ControllerSettings, *, source: MetricsSource | None = None) -> APIRouter:
    """GET /v1/graph (JSON, DOT, GraphML) and GET /graph (a page that draws it)."""
    cache = GraphCache(settings, source or make_source(settings))
    router = APIRouter(tags=["controller"])

    @router.get("/v1/graph")
    async def get_graph(
        view: str = Query("workload", description="workload, app, versionedApp or service"),
        namespace: str | None = Query(None, description="Only edges in or out of this namespace."),
        format: str = Query("json", description="json, dot or graphml"),
    ) -> Response:
        if view not in graph.VIEWS:
            raise HTTPException(400, f"view must be one of {', '.join(graph.VIEWS)}")
        if format not in graph.FORMATS:
            raise HTTPException(400, f"format must be one of {', '.join(graph.FORMATS)}")
        try:
            found = await cache.observation(namespace)
        except ControllerError as error:
            raise HTTPException(503, str(error)) from None
        view_graph = graph.build_view(found.edges, view, namespace)
        return Response(graph.export(view_graph, format), media_type=MEDIA_TYPES[format])

    @router.get("/graph", response_class=HTMLResponse)
    async def graph_page() -> HTMLResponse:
        return HTMLResponse(GRAPH_PAGE.read_text(encoding="utf-8"))

    return router
