"""Real Envoy -> remixer telemetry (ALS) -> /metrics -> real Prometheus scraping it -> controller."""

from __future__ import annotations

import asyncio
import time

from controller.settings import ControllerSettings
from telemetry.settings import TelemetrySettings
from tests.controller.conftest import SERVICE, ScrapedCallerFactory, get, hosts, read_dir_sidecars, until
from tests.controller.helpers import run_at


async def test_sidecar_from_prometheus_scraping_remixer_fed_by_real_envoy(
    scraped_caller: ScrapedCallerFactory,
) -> None:
    caller = await scraped_caller(
        TelemetrySettings.model_validate({"call_edges": {"flush_interval_s": 0.2}}), als_flush="0.1s"
    )
    # One call to ratings through PassthroughCluster: too few for a rate, but telemetry's call-edge
    # table (its default DATA_DIR/edges.db, which the controller finds by itself) recorded it.
    assert await asyncio.to_thread(get, caller.passthrough, "ratings.bookinfo:9080") == 200
    edges_db = caller.data_dir / "edges.db"
    await until(lambda: edges_db.exists() and b"ratings" in edges_db.read_bytes(), seconds=15)

    out = caller.data_dir / "sidecars"
    settings = ControllerSettings(prometheus_url=caller.prometheus_url, window="5m")
    summary = await run_at(settings, sink=f"dir:{out}", data_dir=caller.data_dir, now=time.time())
    assert summary.outcome == "wrote", summary.message
    found = read_dir_sidecars(out)
    assert list(found) == ["bookinfo/remixer-productpage-v1"]
    sidecar = found["bookinfo/remixer-productpage-v1"]
    assert hosts(sidecar) == [
        "bookinfo/ratings.bookinfo.svc.cluster.local",
        f"bookinfo/{SERVICE}",
        "istio-system/*",
        "remixer/*",
    ]
    # The labels Istio's injector put on the pod (node metadata LABELS), as telemetry reported them.
    assert sidecar["spec"]["workloadSelector"]["labels"] == {
        "service.istio.io/canonical-name": "productpage",
        "service.istio.io/canonical-revision": "v1",
    }
