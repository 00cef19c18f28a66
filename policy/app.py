"""Composition root: settings -> adapters -> PolicyService -> edges, as a `remixer.kit.parts.Part`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policy import admin_api
from policy.adapters.base import QuotaBackend
from policy.adapters.memory import MemoryQuotas
from policy.adapters.metrics import PolicyMetrics
from policy.adapters.sql import SqlPolicyStore
from policy.edge import http_authz
from policy.edge.grpc_authz import AuthorizationHandler
from policy.service import DecisionLog, PolicyService
from policy.settings import PolicySettings
from remixer.kit.parts import Part, PartContext, Readiness

__all__ = ["PolicyPart", "build_part", "database_url"]


def database_url(settings: PolicySettings, context: PartContext) -> str:
    if settings.database_url:
        return settings.database_url
    context.data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{context.data_dir / 'policy.db'}"


def _quota_backend(settings: PolicySettings) -> QuotaBackend:
    if settings.quota_backend == "redis":
        from policy.adapters.redis_quotas import RedisQuotas

        return RedisQuotas(
            settings.redis_url, prefix=settings.redis_key_prefix, timeout=settings.redis_timeout
        )
    return MemoryQuotas()


class PolicyPart:
    name = "policy"

    def __init__(self, settings: PolicySettings, context: PartContext) -> None:
        self.settings = settings
        self.context = context
        self.metrics = PolicyMetrics(context.registry)
        try:
            sink = context.records.sink("decisions")
        except Exception:  # a RecordSinks without a decisions stream: no decision logs
            sink = None
        self.service = PolicyService(
            settings=settings,
            store=SqlPolicyStore(
                database_url(settings, context),
                schema=settings.database_schema,
                connect_timeout=settings.store_connect_timeout,
                timeout=settings.store_timeout,
            ),
            quota_backend=_quota_backend(settings),
            metrics=self.metrics,
            decisions=DecisionLog(
                sink,
                sample=settings.decision_log_sample,
                capacity=settings.decision_log_buffer,
                metrics=self.metrics,
            ),
        )
        self.grpc = AuthorizationHandler(self.service)
        self.http: http_authz.HttpAuthzServer | None = None

    def register_grpc(self, server: Any) -> Sequence[str]:
        return self.grpc.register(server)

    def admin_routers(self) -> Sequence[Any]:
        return [admin_api.build_router(self.service, require_writer=self.context.require_writer)]

    async def start(self) -> None:
        if self.settings.http_enabled:
            host, _, port = self.settings.http_address.rpartition(":")
            settings = self.settings
            self.http = http_authz.HttpAuthzServer(
                self.service,
                path_prefix=settings.http_path_prefix,
                wire=http_authz.HttpWire(),
                limits=http_authz.HttpLimits(
                    header_timeout_s=settings.http_header_timeout_s,
                    idle_timeout_s=settings.http_idle_timeout_s,
                    max_connections=settings.http_max_connections,
                    max_head_bytes=settings.http_max_head_bytes,
                    head_budget_bytes=settings.http_head_budget_bytes,
                ),
            )
            # Bind first: a taken port must fail the start before anything else runs.
            await self.http.bind(host.strip("[]"), int(port), reuse_port=self.context.reuse_port)
        try:
            await self.service.start()
        except BaseException:
            if self.http is not None:
                await self.http.close(0)
            await self.service.stop()
            raise

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    def hand_over(self) -> None:
        """Checks are unary: each Envoy picks a replica per call, so there is nothing to hand over."""

    async def stop(self, grace: float) -> None:
        if self.http is not None:
            await self.http.close(grace)
        await self.service.stop()

    def readiness(self) -> Readiness:
        return self.service.readiness()


def build_part(settings: PolicySettings, context: PartContext) -> Part:
    return PolicyPart(settings, context)
