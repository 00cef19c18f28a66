"""An in-process telemetry Part behind a real grpc.aio server on a free port, as `remixer serve` hosts it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from remixer.kit.parts import PartContext
from remixer.kit.shipping import ShippingHub, build_record_sinks
from remixer.kit.shipping.settings import ShippingSettings
from telemetry.app import TelemetryPart
from telemetry.settings import CallEdgeSettings, TelemetrySettings
from tests.waiting import eventually


async def _no_guard(*_args: Any, **_kwargs: Any) -> None:
    return None


@dataclass
class RunningTelemetry:
    part: TelemetryPart
    registry: CollectorRegistry
    hub: ShippingHub
    port: int
    server: grpc.aio.Server
    data_dir: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, dict(labels or {})) or 0.0

    def samples(self, name: str) -> list[dict[str, str]]:
        """Label dicts of every sample of a metric (the full sample name, e.g. istio_requests_total)."""
        out = []
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    out.append({**sample.labels, "__value__": str(sample.value)})
        return out

    async def wait_for(
        self, check: Callable[[], bool], within: float = 15.0, what: str = "condition"
    ) -> None:
        await eventually(check, within=within, what=what)


@asynccontextmanager
async def running_telemetry(
    data_dir: Path,
    settings: TelemetrySettings | None = None,
    shipping: ShippingSettings | None = None,
) -> AsyncIterator[RunningTelemetry]:
    registry = CollectorRegistry()
    hub = build_record_sinks(shipping or ShippingSettings(), data_dir=data_dir, registry=registry)
    context = PartContext(data_dir=data_dir, registry=registry, records=hub, require_writer=_no_guard)
    part = TelemetryPart(settings or TelemetrySettings(), context)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 << 20)])
    part.register_grpc(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await part.start()
    try:
        yield RunningTelemetry(part, registry, hub, port, server, data_dir)
    finally:
        await part.stop(1.0)
        await server.stop(1.0)
        await hub.close()


class _NoSinks:
    def sink(self, stream: str) -> None:
        return None


def offline_part(settings: TelemetrySettings | None = None) -> TelemetryPart:
    """A telemetry part without server, record sinks or call-edge store: readers fed messages directly."""
    context = PartContext(
        data_dir=Path("/nonexistent"),
        registry=CollectorRegistry(),
        records=_NoSinks(),  # type: ignore[arg-type]
        require_writer=_no_guard,
    )
    return TelemetryPart(settings or TelemetrySettings(call_edges=CallEdgeSettings(enabled=False)), context)
