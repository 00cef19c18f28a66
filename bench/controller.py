"""Controller recompute benchmark: 5,000 workloads / 50,000 edges backfilled into a real Prometheus.

Leaves (workloads that only receive calls, 1,000 by default) get a Sidecar too and are counted in the
xDS estimate. Measures a full recompute with the dir: sink (wall time, peak RSS, objects written), a re-run on
unchanged data (must write 0), and, as the baseline in the same run, the time of the main
Prometheus query alone (what any graph builder must pay). Also prints the estimated cluster
reduction for a 400-service mesh with mean fan-out 5.

    .venv/bin/python bench/controller.py [--workloads 5000] [--fanout 10]
Last line: `controller_recompute: X (s) ratio: Y` with Y = recompute / Prometheus-query-alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMESPACES = 50
DOMAIN = "svc.cluster.local"


def write_openmetrics(
    path: Path, *, workloads: int, fanout: int, end: float, leaves: int = 0, seed: int = 7
) -> int:
    """One source-reported istio_requests_total series per edge, 4 samples over 15 minutes. The first
    `workloads` call `fanout` others each; `leaves` more only receive calls."""
    rng = random.Random(seed)
    edges = 0
    with path.open("w", encoding="utf-8") as out:
        for index in range(workloads):
            namespace = f"ns{index % NAMESPACES}"
            workload = f"wl{index}"
            callees = rng.sample(range(workloads + leaves), fanout + 1)
            callees = [c for c in callees if c != index][:fanout]
            for callee in callees:
                callee_ns = f"ns{callee % NAMESPACES}"
                # The canonical labels Istio's injector puts on every pod select each workload's Sidecar.
                labels = (
                    f'destination_canonical_revision="v1",destination_canonical_service="app{callee}",'
                    f'destination_service="svc{callee}.{callee_ns}.{DOMAIN}",destination_service_namespace="{callee_ns}",'
                    f'destination_workload="wl{callee}",destination_workload_namespace="{callee_ns}",'
                    f'reporter="source",request_protocol="http",response_code="200",source_app="app{index}",'
                    f'source_canonical_revision="v1",source_canonical_service="app{index}",'
                    f'source_version="v1",source_workload="{workload}",source_workload_namespace="{namespace}"'
                )
                for step in range(4):
                    out.write(f"istio_requests_total{{{labels}}} {step * 300} {end - 900 + step * 300:.3f}\n")
                edges += 1
        out.write("# EOF\n")
    return edges


def child_run(args: argparse.Namespace) -> None:
    """One recompute in a fresh process, so its peak RSS is its own."""
    from controller.app import compose
    from controller.settings import ControllerSettings

    settings = ControllerSettings(
        prometheus_url=args.prometheus_url,
        window="30m",
        prometheus_timeout_seconds=120,
        database_url=f"sqlite+aiosqlite:///{args.work}/controller.db",
    )

    async def main() -> dict[str, object]:
        started = time.perf_counter()
        composition = await compose(settings, sink_spec=f"dir:{args.work}/sidecars", data_dir=Path(args.work))
        summary = await composition.reconciler.run_once(now=args.now)
        await composition.close()
        return {
            "seconds": time.perf_counter() - started,
            "outcome": summary.outcome,
            "message": summary.message,
            "written": summary.written,
            "edges": summary.edges,
            "workloads": summary.workloads,
            "xds_workloads": summary.shrink.workloads if summary.shrink else 0,
            "cluster_reduction": summary.shrink.cluster_reduction if summary.shrink else 0.0,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    print(json.dumps(asyncio.run(main())))


def run_child(prometheus_url: str, work: Path, now: float) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--prometheus-url",
            prometheus_url,
            "--work",
            str(work),
            "--now",
            str(now),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"recompute failed: {done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def query_alone(prometheus_url: str, now: float) -> float:
    """Baseline: the main Kiali-style query and the decoding of its JSON, nothing else."""
    import requests

    from controller.core import promql

    query = promql.build_queries(window="30m")[0].promql
    started = time.perf_counter()
    response = requests.post(
        f"{prometheus_url}/api/v1/query", data={"query": query, "time": now}, timeout=120
    )
    rows = response.json()["data"]["result"]
    elapsed = time.perf_counter() - started
    assert rows, "baseline query returned nothing"
    return elapsed


def fanout_estimate(services: int = 400, fanout: int = 5, seed: int = 11) -> float:
    from controller.core import shrink
    from controller.structs import SidecarSpec

    rng = random.Random(seed)
    hosts = [f"ns{i % 20}/s{i}.ns{i % 20}.{DOMAIN}" for i in range(services)]
    known = {h: shrink.ServiceInfo(h) for h in hosts}
    for system in ("istiod", "istio-ingressgateway"):
        host = f"istio-system/{system}.istio-system.{DOMAIN}"
        known[host] = shrink.ServiceInfo(host)
    specs = []
    for i in range(services):
        count = max(1, round(rng.expovariate(1 / fanout)))
        called = rng.sample([h for h in hosts if h != hosts[i]], min(count, services - 1))
        specs.append(
            SidecarSpec(
                "ns", f"w{i}", (("app", f"w{i}"),), tuple(sorted({*called, "istio-system/*"})), (f"w{i}",)
            )
        )
    return shrink.estimate(specs, known, workloads=services).cluster_reduction


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", type=int, default=5000)
    parser.add_argument("--fanout", type=int, default=10)
    parser.add_argument("--leaves", type=int, default=1000, help="workloads that only receive calls")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions of baseline and recompute (median)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prometheus-url", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--now", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_run(args)
        return

    from tests.realparts.prometheus import PrometheusServer

    with tempfile.TemporaryDirectory(prefix="bench-controller-") as temp:
        work = Path(temp)
        end = time.time() - 60
        prom_root = work / "prometheus"
        prom_root.mkdir()
        server = PrometheusServer(prom_root)
        started = time.perf_counter()
        source = work / "mesh.om"
        edges = write_openmetrics(
            source, workloads=args.workloads, fanout=args.fanout, end=end, leaves=args.leaves
        )
        generated = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(server.data_dir)],
            check=True,
            capture_output=True,
        )
        backfilled = time.perf_counter() - started
        source.unlink()
        server.start(timeout=120)
        try:
            print(
                f"mesh: {args.workloads} calling workloads + {args.leaves} leaves, {edges} edges "
                f"(generated {generated:.1f} s, "
                f"promtool backfill {backfilled:.1f} s)"
            )
            baseline_runs = [query_alone(server.url, end) for _ in range(args.repeat)]
            baseline = statistics.median(baseline_runs)
            print(
                f"baseline (main Prometheus query + JSON decode alone): median {baseline:.2f} s "
                f"(min {min(baseline_runs):.2f}, max {max(baseline_runs):.2f})"
            )
            runs = []
            for attempt in range(args.repeat):
                run_dir = work / f"run{attempt}"
                run_dir.mkdir()
                runs.append(run_child(server.url, run_dir, end))
                first = runs[-1]
                print(
                    f"full recompute #{attempt + 1}: {first['seconds']:.2f} s wall, "
                    f"peak RSS {first['rss_mb']:.0f} MB, "
                    f"objects written {first['written']} ({first['outcome']}; {first['edges']} edges, "
                    f"{first['workloads']} workloads scoped, xDS estimate over {first['xds_workloads']} "
                    f"workloads: clusters -{float(first['cluster_reduction']):.1%})"
                )
            times = [float(r["seconds"]) for r in runs]  # type: ignore[arg-type]
            peak = max(float(r["rss_mb"]) for r in runs)  # type: ignore[arg-type]
            recompute = statistics.median(times)
            print(
                f"full recompute: median {recompute:.2f} s (min {min(times):.2f}, max {max(times):.2f}), "
                f"peak RSS {peak:.0f} MB, objects written {first['written']}  bars: <= 60 s, <= 1536 MB"
            )
            second = run_child(server.url, work / f"run{args.repeat - 1}", end)
            print(
                f"re-run, unchanged data: {second['seconds']:.2f} s, peak RSS {second['rss_mb']:.0f} MB, "
                f"objects written {second['written']} ({second['outcome']})  bar: 0 writes"
            )
        finally:
            server.stop()
    reduction = fanout_estimate()
    print(f"estimated cluster reduction, 400 services, mean fan-out 5: {reduction:.1%}  bar: >= 95%")
    print(f"controller_recompute: {recompute:.2f} (s) ratio: {recompute / baseline:.2f}")


if __name__ == "__main__":
    main()
