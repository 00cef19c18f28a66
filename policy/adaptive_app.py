"""The `adaptive` part of `remixer serve`: the controller loop beside a policy part in the same process.

The composition root hands it the policy part (whose service enforces the limits) and a signal source;
this module picks the leader election and mounts `GET /v1/adaptive-state` (what `remixer adaptive
status` prints).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from policy.adapters.adaptive_metrics import AdaptiveMetrics
from policy.adapters.adaptive_state import (
    AdaptiveStateStore,
    Leadership,
    PostgresLeadership,
    RedisLeadership,
    SoleLeadership,
    replica_identity,
)
from policy.adapters.sql import SqlPolicyStore
from policy.adaptive import AdaptiveController, SignalSource
from policy.app import PolicyPart
from policy.settings import AdaptiveSettings
from remixer.kit.parts import PartContext, Readiness

__all__ = ["AdaptivePart", "RuleStateOut", "build_part"]


class RuleStateOut(BaseModel):
    name: str
    dry_run: bool
    leader: str
    mode: str
    limit: float
    min_rate: float
    max_rate: float
    callers: dict[str, float]
    unknown: float
    step: dict[str, Any]
    updated_at: float
    seen_here: dict[str, dict[str, int]]  # caller ("unknown" for the rest) -> admitted, rejected


def _leadership(settings: AdaptiveSettings, policy: PolicyPart, context: PartContext) -> Leadership:
    identity = replica_identity()
    store = policy.service.store
    choice = settings.leader
    postgres = isinstance(store, SqlPolicyStore) and store.url.startswith("postgresql")
    if choice == "auto":
        choice = "postgres" if postgres else "redis" if policy.settings.quota_backend == "redis" else "sole"
    if choice == "postgres":
        if not isinstance(store, SqlPolicyStore) or not postgres:
            raise ValueError("adaptive.leader postgres needs policy.database_url on PostgreSQL")
        return PostgresLeadership(store.engine, identity)
    if choice == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(policy.settings.redis_url, socket_timeout=1.0)
        return RedisLeadership(
            client, policy.settings.redis_key_prefix + "adaptive-leader", identity, ttl=settings.lease_ttl
        )
    return SoleLeadership(identity, leads=context.worker_index == 0)


class AdaptivePart:
    name = "adaptive"

    def __init__(
        self, settings: AdaptiveSettings, context: PartContext, policy: PolicyPart, source: SignalSource
    ) -> None:
        store = policy.service.store
        if not isinstance(store, SqlPolicyStore):
            raise ValueError("adaptive limits need the SQL policy store")
        self.policy = policy
        service = policy.service
        table = service.adaptive
        self.metrics = AdaptiveMetrics(
            context.registry,
            lambda: {d.name: table.counts(d.name) for d in service.snapshot.document.adaptive},
        )
        self.controller = AdaptiveController(
            rules=lambda: list(service.snapshot.document.adaptive),
            table=table,
            states=AdaptiveStateStore(store.engine),
            leadership=_leadership(settings, policy, context),
            source=source,
            observer=self.metrics,
            resolution=settings.resolution,
        )

    def register_grpc(self, server: Any) -> Sequence[str]:
        return []

    def admin_routers(self) -> Sequence[Any]:
        router = APIRouter(prefix="/v1", tags=["policy"])
        controller = self.controller
        service = self.policy.service

        @router.get("/adaptive-state", summary="What each adaptive limit's controller last decided")
        async def adaptive_state() -> list[RuleStateOut]:
            out = []
            for rule in service.snapshot.document.adaptive:
                state = controller.last.get(rule.name)
                counts = controller.table.counts(rule.name)
                out.append(
                    RuleStateOut(
                        name=rule.name,
                        dry_run=rule.dry_run,
                        leader=state.leader if state else "",
                        mode=state.mode if state else "waiting",
                        limit=state.limit if state else rule.max_rate,
                        min_rate=rule.min_rate,
                        max_rate=rule.max_rate,
                        callers=dict(state.callers) if state else {},
                        unknown=state.unknown if state else rule.max_rate,
                        step=dict(state.step) if state else {},
                        updated_at=state.updated_at if state else 0.0,
                        seen_here={
                            caller or "unknown": {"admitted": a, "rejected": r}
                            for caller, (a, r) in counts.items()
                        },
                    )
                )
            return out

        return [router]

    async def start(self) -> None:
        # After the policy part: its store is migrated and its snapshot loaded.
        self.controller.start()

    def hand_over(self) -> None:
        """Nothing long-lived to move: the loop runs until stop(), a follower takes over leadership."""

    async def stop(self, grace: float) -> None:
        await self.controller.stop()

    def readiness(self) -> Readiness:
        return Readiness(True, "leader" if self.controller.leader else "follower")


def build_part(
    settings: AdaptiveSettings, context: PartContext, policy: PolicyPart, source: SignalSource
) -> AdaptivePart:
    return AdaptivePart(settings, context, policy, source)
