"""The policy runtime: the current snapshot (swapped atomically), Check, quotas, reloads, decision logs.

A Check only reads `self._snapshot` once, so a reload swapping it mid-request is harmless. The store
is read by the reload loop only; a store outage leaves the last snapshot serving and counts staleness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from policy.adapters.base import BackendUnavailable, PolicyStore, QuotaBackend
from policy.adapters.memory import MemoryQuotas
from policy.adapters.metrics import PolicyMetrics
from policy.adaptive import AdaptiveTable
from policy.core import documents, matching, quotas, rules
from policy.core.caching import CachedDecision, DecisionCache
from policy.core.checks import CheckRequest
from policy.settings import PolicySettings
from policy.structs import CheckInput, Decision, PolicyError, QuotaVerdict
from remixer.kit.parts import Readiness, RecordSink

__all__ = ["DecisionLog", "PolicyService"]

log = logging.getLogger("remixer.policy")

_MAX_CACHED_VALUE = 2048
_REPEAT_STORE_ERROR = 60.0  # seconds between log lines while the store keeps failing the same way
_MAX_WIRE_KEY = 8192
_MAX_PATH = 16 * 1024  # a longer path is counted as odd input (it is still decided)


class DecisionLog:
    """Buffers decision records on the Check path (one list append) and ships batches from a task."""

    def __init__(
        self, sink: RecordSink | None, *, sample: float, capacity: int, metrics: PolicyMetrics
    ) -> None:
        self._sink = sink
        self._sample = sample if sink is not None else 0.0
        self._capacity = capacity
        self._buffer: list[tuple[Any, ...]] = []
        self._metrics = metrics
        self._random = random.random

    def _room(self) -> bool:
        if self._sample <= 0 or (self._sample < 1 and self._random() >= self._sample):
            return False
        if len(self._buffer) >= self._capacity:
            self._metrics.decision_log_dropped.inc()
            return False
        return True

    def add(
        self, request: CheckRequest, decision: Decision, dry_run: Sequence[str], cached: bool, latency: float
    ) -> None:
        if self._room():
            # The record's fields, not the request: a few strings, where holding the request would keep
            # what it decoded (dicts of headers and labels) alive until the flush. Measured cheaper too.
            self._buffer.append((time.time(), request.record_fields(), decision, dry_run, cached, latency))

    def flush(self) -> int:
        if not self._buffer or self._sink is None:
            return 0
        batch, self._buffer = self._buffer, []
        records = [_record(at, *fields, *rest) for at, fields, *rest in batch]
        accepted = self._sink.offer(records)
        if accepted < len(records):
            self._metrics.decision_log_dropped.inc(len(records) - accepted)
        return accepted


def _record(
    at: float,
    request_id: str,
    source_address: str,
    source_principal: str,
    source_service: str,
    host: str,
    destination_service: str,
    destination_port: int,
    method: str,
    path: str,
    decision: Decision,
    dry_run: Sequence[str],
    cached: bool,
    latency: float,
) -> tuple[bytes | None, bytes]:
    request_id = request_id[:256]
    # Flat keys: cheaper to build and to query (e.g. in ksqlDB / ClickHouse) than nested objects.
    value = {
        "time": at,
        "request_id": request_id,
        "source_address": source_address[:64],
        "source_principal": source_principal[:512],
        "source_service": source_service[:256],
        "destination_host": host[:256],
        "destination_service": destination_service[:256],
        "destination_port": destination_port,
        "method": method[:32],
        "path": path[:2048],
        "decision": decision.kind,
        "status": decision.status,
        "rule": decision.rule_id,
        "dry_run_rules": dry_run,
        "cached": cached,
        "latency_seconds": latency,
    }
    return (request_id.encode() or None, orjson.dumps(value))


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    evaluation: matching.Evaluation
    would_consume: tuple[str, ...]


class PolicyService:
    def __init__(
        self,
        *,
        settings: PolicySettings,
        store: PolicyStore,
        quota_backend: QuotaBackend,
        metrics: PolicyMetrics,
        decisions: DecisionLog,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.decisions = decisions
        self._quotas = quota_backend
        self._local = quota_backend if isinstance(quota_backend, MemoryQuotas) else MemoryQuotas()
        self._sync_quotas = isinstance(quota_backend, MemoryQuotas)
        # The limits adaptive rules' controllers set, by caller (policy/adaptive.py).
        self.adaptive = AdaptiveTable()
        self._snapshot = self._compile(documents.PolicyDocument(), revision=-1)
        self._undecodable = self._undecodable_for(self._snapshot)
        self._cache = DecisionCache(size=settings.cache_size, ttl=settings.cache_ttl)
        self._cache_on = self._cache.enabled
        self._loaded = False
        self._last_store_ok = time.monotonic()
        self._file_stamps: dict[Path, _Stamp] = {}
        self._broken_files: dict[Path, _BrokenFile] = {}
        self._store_error: str | None = None
        self._store_error_logged = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._odd_logged = 0.0
        metrics.watch_staleness(self.staleness)

    # ---- snapshot ---------------------------------------------------------------------------

    @property
    def snapshot(self) -> rules.Snapshot:
        return self._snapshot

    def _compile(self, doc: documents.PolicyDocument, *, revision: int) -> rules.Snapshot:
        return rules.compile_snapshot(
            doc,
            revision=revision,
            default_decision=self.settings.default_decision,
            default_deny_status=self.settings.default_deny_status,
            jwt_header=self.settings.jwt_payload_header.lower(),
            max_list_entries=self.settings.max_list_entries,
        )

    def validate(self, data: dict[str, list[dict[str, Any]]]) -> None:
        """The one validation both YAML files and the admin API go through (raises PolicyError)."""
        self._compile(documents.parse_document(data), revision=0)

    def _undecodable_for(self, snapshot: rules.Snapshot) -> Decision:
        answer = self.settings.undecodable_decision
        if answer == "allow":
            return Decision(kind="allow", status=200, rule_id="undecodable")
        if answer == "deny":
            status = self.settings.default_deny_status
            return Decision(kind="deny", status=status, rule_id="undecodable", body="undecodable request\n")
        return snapshot.default

    def _swap(self, snapshot: rules.Snapshot) -> None:
        self._snapshot = snapshot
        self._undecodable = self._undecodable_for(snapshot)
        # A new cache per snapshot: nothing decided under an old policy survives the swap.
        self._cache = DecisionCache(size=self.settings.cache_size, ttl=self.settings.cache_ttl)
        self.metrics.revision.set(snapshot.revision)
        self.metrics.rules.set(snapshot.rule_count)
        log.info("policy snapshot revision=%d rules=%d", snapshot.revision, snapshot.rule_count)

    async def reload(self, *, force: bool = False) -> bool:
        """Load the store's policy when its revision moved; True when a new snapshot is enforced."""
        async with self._reload_lock:
            try:
                revision = await self.store.revision()
                if not force and self._loaded and revision == self._snapshot.revision:
                    self._last_store_ok = time.monotonic()
                    return False
                stored = await self.store.load()
            except BackendUnavailable as exc:
                self.metrics.reload_errors.labels(source="store").inc()
                self._store_failed(str(exc))
                return False
            self._last_store_ok = time.monotonic()
            if self._store_error is not None:
                log.info("policy store answers again, %.1fs without it", self.staleness())
                self._store_error = None
            try:
                # In a thread: compiling a large policy takes seconds of CPU the Checks must not wait for.
                document = documents.parse_document(stored.data)
                snapshot = await asyncio.to_thread(self._compile, document, revision=stored.revision)
            except PolicyError as exc:
                self.metrics.reload_errors.labels(source="store").inc()
                log.error(
                    "stored policy revision %d refused, keeping %d: %s",
                    stored.revision,
                    self._snapshot.revision,
                    exc,
                )
                return False
            self._swap(snapshot)
            self._loaded = True
            return True

    def _store_failed(self, error: str) -> None:
        """Every failed poll counts; the log says it when the error changes, then once a minute."""
        now = time.monotonic()
        if error != self._store_error or now - self._store_error_logged >= _REPEAT_STORE_ERROR:
            self._store_error, self._store_error_logged = error, now
            log.warning("%s; serving revision %d", error, self._snapshot.revision)

    async def import_files(self, *, strict: bool) -> None:
        """Sync each policy file that changed into the store (the file owns its items).

        A file that fails is logged and counted once per change of its content (stat stamp), not at
        every poll, and shows in /readyz until it loads; the previous policy keeps serving."""
        for path in self.settings.policy_files:
            try:
                stamp = _stamp(path)
            except OSError as exc:
                self._file_failed(path, None, f"cannot be read: {exc.strerror or exc}", strict=strict)
                continue
            if self._file_stamps.get(path) == stamp:
                continue
            broken = self._broken_files.get(path)
            if broken is not None and broken.stamp == stamp:
                continue
            try:
                plain = read_policy_file(path)
                await self.store.sync_origin(
                    f"file:{path}", plain, actor=f"file:{path}", validate=self.validate
                )
            except OSError as exc:
                self._file_failed(path, stamp, f"cannot be read: {exc.strerror or exc}", strict=strict)
                continue
            except PolicyError as exc:
                self._file_failed(path, stamp, str(exc), strict=strict)
                continue
            except BackendUnavailable as exc:
                # The store's trouble, not the file's: tried again at the next poll, counted by reload().
                if strict:
                    raise PolicyError(f"policy file {path} not loaded: {exc}") from None
                continue
            self._file_stamps[path] = stamp
            if self._broken_files.pop(path, None) is not None:
                log.info("policy file %s loaded again", path)

    def _file_failed(self, path: Path, stamp: _Stamp | None, error: str, *, strict: bool) -> None:
        message = f"policy file {path} not loaded: {error}"
        if strict:
            raise PolicyError(message)
        broken = self._broken_files.get(path)
        if broken is not None and broken.stamp == stamp and broken.error == error:
            return
        self._broken_files[path] = _BrokenFile(stamp, error, time.time())
        self.metrics.reload_errors.labels(source="file").inc()
        log.error("%s (still serving revision %d)", message, self._snapshot.revision)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                await self.import_files(strict=False)
                await self.reload()
            except Exception:
                log.exception("policy reload failed")

    async def _ship(self) -> None:
        while True:
            await asyncio.sleep(self.settings.decision_log_flush_interval)
            try:
                self.decisions.flush()
            except Exception:
                log.exception("decision log flush failed")

    async def start(self) -> None:
        if not rules.COMPILED_EVALUATOR:
            log.warning(
                "remixer/kit/native/evaluator was not built (no C compiler at install): rules are evaluated "
                "in Python; the decisions are the same, each uncached Check costs more CPU"
            )
        await self.store.migrate()
        await self.import_files(strict=True)
        await self.reload(force=True)
        self._tasks = [
            asyncio.create_task(self._poll(), name="policy-reload"),
            asyncio.create_task(self._ship(), name="policy-decision-log"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.decisions.flush()
        await self._quotas.close()
        await self.store.close()

    def staleness(self) -> float:
        return max(0.0, time.monotonic() - self._last_store_ok)

    def readiness(self) -> Readiness:
        stale = self.staleness()
        snap = self._snapshot
        detail = f"revision {snap.revision}, {snap.rule_count} rules, store read {stale:.1f}s ago"
        if not self._loaded:
            return Readiness(False, "policy not loaded yet")
        ready = True
        max_stale = self.settings.max_staleness
        if max_stale and stale > max_stale:
            ready = False
            detail += f" (over max_staleness {max_stale:g}s)"
        for path, broken in sorted(self._broken_files.items()):
            ready = ready and self.settings.ready_with_broken_file
            detail += (
                f"; policy file {path} broken for {time.time() - broken.since:.0f}s "
                f"(serving revision {snap.revision}): {broken.error}"
            )
        return Readiness(ready, detail)

    # ---- Check ------------------------------------------------------------------------------

    def check(self, request: CheckRequest) -> Decision | Awaitable[Decision]:
        """The decision on one Check, or (a shared quota must be asked) an awaitable of it.

        The request is asked for its cache key first: a hit is answered without decoding it. Never
        raises: an unexpected failure (a reader's or the evaluator's bug) is counted and gets the
        policy's default, never a wire error. One function, not several: it runs for every Check."""
        snapshot = self._snapshot
        cache = self._cache
        try:
            key = request.cache_key(snapshot) if self._cache_on else None
            if key is not None:
                hit = cache.get(key, time.monotonic())
                if hit is not None:
                    return self._hit(request, hit)
            req = request.attributes()
            if req is None:
                # No attribute can be trusted, so no rule is evaluated: `undecodable_decision` answers.
                self.count_odd("undecodable")
                self._record(request, self._undecodable, (), False)
                return self._undecodable
            if not req.method:
                self.count_odd("no_http_attributes")
            elif len(req.path) > _MAX_PATH:
                self.count_odd("long_path")
            if key is None and self._cache_on:  # none off the request: keyed on its attributes
                key = snapshot.cache_key(req)
                hit = cache.get(key, time.monotonic())
                if hit is not None:
                    return self._hit(request, hit)
            if key is not None:
                self.metrics.hot.cache_misses += 1
            evaluation = matching.evaluate(snapshot, req)
            if not evaluation.quotas:
                if key is not None and _small(key):
                    cache.put(key, evaluation.decision, evaluation.dry_run_rules, time.monotonic())
                self._record(request, evaluation.decision, evaluation.dry_run_rules, False)
                return evaluation.decision
            if not self._sync_quotas:
                return self._finish(snapshot, request, evaluation)
            verdicts = [self._take_local(q) for q in evaluation.quotas]
            decision = self._apply_verdicts(evaluation, verdicts)
            self._record(request, decision, evaluation.dry_run_rules, False)
            return decision
        except Exception:
            self.count_odd("check_error", exc_info=True)
            return snapshot.default

    def _hit(self, request: CheckRequest, hit: CachedDecision) -> Decision:
        self.metrics.hot.cache_hits += 1
        self._record(request, hit.decision, hit.dry_run_rules, True)
        return hit.decision

    async def _finish(
        self, snapshot: rules.Snapshot, request: CheckRequest, evaluation: matching.Evaluation
    ) -> Decision:
        """The rest of a Check whose quotas live in the shared backend."""
        try:
            verdicts = [await self._take_shared(q) for q in evaluation.quotas]
            decision = self._apply_verdicts(evaluation, verdicts)
            self._record(request, decision, evaluation.dry_run_rules, False)
        except Exception:
            self.count_odd("check_error", exc_info=True)
            return snapshot.default
        return decision

    async def _take_shared(self, q: matching.QuotaRequest) -> QuotaVerdict | None:
        """A verdict from the shared backend, or the configured fallback (None = admit)."""
        key, requests, period = self._bucket(q)
        try:
            return await self._quotas.take(
                key=key, requests=requests, period=period, algorithm=q.limit.algorithm
            )
        except BackendUnavailable as exc:
            fallback = self.settings.quota_fallback
            self.metrics.redis_errors.labels(fallback=fallback).inc()
            self.count_odd("quota_backend_down", message=str(exc), count=False)
            if fallback == "allow":
                return None
            if fallback == "deny":
                return QuotaVerdict(False, requests, 0, 1.0)
            return self._take_local(q)

    def _take_local(self, q: matching.QuotaRequest) -> QuotaVerdict:
        key, requests, period = self._bucket(q)
        return self._local.take_now(key=key, requests=requests, period=period, algorithm=q.limit.algorithm)

    def _bucket(self, q: matching.QuotaRequest) -> tuple[str, int, float]:
        """Counter key, requests and period of one take: the limit's, or what an adaptive rule set."""
        if self.adaptive.active:
            return self.adaptive.resolve(q.limit, q.key)
        return q.key, q.limit.requests, q.limit.period

    def _apply_verdicts(
        self, evaluation: matching.Evaluation, verdicts: Sequence[QuotaVerdict | None]
    ) -> Decision:
        for q, verdict in zip(evaluation.quotas, verdicts, strict=True):
            if self.adaptive.active:
                self.adaptive.observe(q.limit, q.key, verdict is None or verdict.allowed)
            if verdict is None or verdict.allowed:
                continue
            self.metrics.quota_rejections.labels(limit=q.limit.name, shadow=str(q.limit.shadow).lower()).inc()
            if q.limit.shadow:
                continue
            return Decision(
                kind="rate_limited",
                status=429,
                rule_id=q.rule_id,
                body="rate limit exceeded\n",
                response_headers=quotas.rejected_headers(verdict),
            )
        return evaluation.decision

    def _record(
        self, request: CheckRequest, decision: Decision, dry_run: Sequence[str], cached: bool
    ) -> None:
        latency = self._count(decision, dry_run, request.started)
        self.decisions.add(request, decision, dry_run, cached, latency)

    def _count(self, decision: Decision, dry_run: Sequence[str], started: float) -> float:
        """Count one decided Check in the metrics; its latency."""
        latency = time.perf_counter() - started
        metrics = self.metrics
        metrics.count_check(decision.kind, decision.rule_id, latency)
        for rule_id in dry_run:
            metrics.dry_run.labels(rule=rule_id).inc()
        return latency

    def count_odd(self, kind: str, *, message: str = "", exc_info: bool = False, count: bool = True) -> None:
        if count:
            self.metrics.odd_inputs.labels(kind=kind).inc()
        now = time.monotonic()
        if now - self._odd_logged > 10:  # at most one log line per 10 s on the hot path
            self._odd_logged = now
            log.warning("odd check input kind=%s %s", kind, message, exc_info=exc_info)

    # ---- explain (POST /v1/evaluate) --------------------------------------------------------

    def explain(self, req: CheckInput) -> Explanation:
        evaluation = matching.evaluate(self._snapshot, req, explain=True)
        return Explanation(evaluation.decision, evaluation, tuple(q.key for q in evaluation.quotas))


def _small(key: Hashable) -> bool:
    """Giant attribute values (64 KiB headers) would make the cache a memory sink: not cached."""
    if isinstance(key, bytes):
        return len(key) <= _MAX_WIRE_KEY
    return all(v is None or len(v) <= _MAX_CACHED_VALUE for v in key)  # type: ignore[attr-defined]


# What tells a changed file apart: an edit moves mtime or size, a ConfigMap swap (symlink) the inode.
_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp:
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


@dataclass(frozen=True, slots=True)
class _BrokenFile:
    stamp: _Stamp | None
    error: str
    since: float


def read_policy_file(path: Path) -> dict[str, list[dict[str, Any]]]:
    """A policy file as the store holds it; PolicyError naming file:line:column for bad YAML and
    listing every invalid field."""
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or "malformed YAML"
        context = getattr(exc, "context", None)
        raise PolicyError(f"{where}: {problem}" + (f" ({context})" if context else "")) from None
    doc = documents.parse_document(data, source=str(path))
    plain = doc.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return {k: plain.get(k, []) for k in ("rules", "lists", "limits", "adaptive")}
