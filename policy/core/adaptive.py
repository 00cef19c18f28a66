"""Adaptive limit rules: the document model, and how one becomes a rate_limit rule plus the limit it owns.

A rule names a target (the destination's service and optionally workload and path template, which
pick the telemetry the controller reads), the signals and their setpoints, bounds, gains, the tick
interval and per-caller priorities. Compiled, it is an ordinary `rate_limit` rule with id
`adaptive:<name>` consuming from the limit `adaptive:<name>` (a token bucket per second, one counter
per caller); the controller then only changes how many requests that limit admits, per caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from policy.core.documents import PolicyDocument

__all__ = [
    "PREFIX",
    "SIGNALS",
    "AdaptiveDoc",
    "CallerDoc",
    "GainsDoc",
    "SignalDoc",
    "TargetDoc",
    "expand",
    "limit_name",
]

PREFIX = "adaptive:"
SignalName = Literal["p99_latency_ms", "p90_latency_ms", "error_ratio", "concurrency"]
SIGNALS: tuple[str, ...] = ("p99_latency_ms", "p90_latency_ms", "error_ratio", "concurrency")
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_LABEL_PATTERN = r"^[^\x00-\x1f\x7f]{1,253}$"
_STRICT = ConfigDict(extra="forbid", frozen=True)


class TargetDoc(BaseModel):
    model_config = _STRICT

    service: str = Field(
        pattern=_LABEL_PATTERN,
        description="destination service as telemetry labels it (destination_service, e.g. "
        "reviews.default.svc.cluster.local); the signals are read for it",
    )
    workload: str | None = Field(None, pattern=_LABEL_PATTERN, description="only this destination_workload")
    path: str | None = Field(
        None,
        pattern=_LABEL_PATTERN,
        description="only this request_path template (telemetry's path templates must be on)",
    )
    match: dict[str, Any] | None = Field(
        None,
        description="which Checks the limit applies to, in the rules' matcher language; default "
        "{destination.service: {exact: <service>}}",
    )


class SignalDoc(BaseModel):
    model_config = _STRICT

    signal: SignalName = Field(
        description="p99_latency_ms / p90_latency_ms (istio_request_duration_milliseconds), error_ratio "
        "(5xx / all), concurrency (requests in flight by Little's law: rate x mean latency)"
    )
    setpoint: float = Field(gt=0, le=1e7)

    @model_validator(mode="after")
    def _ratio(self) -> SignalDoc:
        if self.signal == "error_ratio" and self.setpoint > 1:
            raise ValueError("an error_ratio setpoint is a fraction (0 < setpoint <= 1)")
        return self


class GainsDoc(BaseModel):
    model_config = _STRICT

    kp: float = Field(0.4, ge=0, le=100)
    ki: float = Field(0.1, ge=0, le=100)
    kd: float = Field(0.1, ge=0, le=100)


class CallerDoc(BaseModel):
    model_config = _STRICT

    caller: str = Field(min_length=1, max_length=512, description="the caller attribute's value")
    priority: int = Field(0, ge=0, le=1000, description="lower is served first")
    share: float = Field(
        1.0, gt=0, le=1, description="fraction of the limit guaranteed before lower priorities are served"
    )


class AdaptiveDoc(BaseModel):
    model_config = _STRICT

    name: str = Field(pattern=_NAME_PATTERN)
    description: str = ""
    target: TargetDoc
    signals: list[SignalDoc] = Field(
        min_length=1, max_length=4, description="several: the most stressed one steers (each / its setpoint)"
    )
    min_rate: float = Field(gt=0, le=1e7, description="requests per second the limit never goes below")
    max_rate: float = Field(gt=0, le=1e7, description="requests per second the limit never exceeds")
    gains: GainsDoc = Field(default_factory=GainsDoc)
    max_step: float = Field(0.2, gt=0, le=1, description="fraction of the limit one tick may move it")
    interval: float = Field(1.0, ge=0.1, le=300, description="seconds between ticks")
    signal_timeout: float = Field(
        30.0, gt=0, le=3600, description="seconds without fresh signal before the limit decays to max_rate"
    )
    headroom: float = Field(
        1.5, ge=0, le=100, description="while healthy the limit stays <= headroom x offered rate (0: off)"
    )
    burst: float = Field(
        0.1,
        gt=0,
        le=10,
        description="seconds of its limit a caller may spend at once (the token bucket's depth): short, "
        "so a step in load meets the limit, not a bucket filled while traffic was light",
    )
    caller: str = Field("source.principal", description="the attribute that names a caller")
    callers: list[CallerDoc] = Field(
        default_factory=list, description="known callers; every other caller shares what they leave"
    )
    dry_run: bool = Field(False, description="compute and export the limit, never reject")

    @field_validator("caller")
    @classmethod
    def _caller(cls, value: str) -> str:
        from policy.core.documents import check_attribute

        return check_attribute(value)

    @model_validator(mode="after")
    def _bounds(self) -> AdaptiveDoc:
        if self.min_rate > self.max_rate:
            raise ValueError(f"min_rate {self.min_rate:g} is above max_rate {self.max_rate:g}")
        names = [s.signal for s in self.signals]
        if len(set(names)) != len(names):
            raise ValueError("each signal may appear once")
        callers = [c.caller for c in self.callers]
        if len(set(callers)) != len(callers):
            raise ValueError("each caller may appear once")
        return self


def limit_name(name: str) -> str:
    return PREFIX + name


def expand(document: PolicyDocument) -> PolicyDocument:
    """The document with each adaptive rule turned into the rate_limit rule and the limit it owns."""
    if not document.adaptive:
        return document
    from policy.core.documents import LimitDoc, RuleDoc

    rules = list(document.rules)
    limits = list(document.limits)
    for item in document.adaptive:
        name = limit_name(item.name)
        match = item.target.match or {"destination.service": {"exact": item.target.service}}
        rules.append(
            RuleDoc(
                id=name,
                action="rate_limit",
                description=f"adaptive limit {item.name!r}",
                limit=name,
                match=match,
            )
        )
        limits.append(
            LimitDoc(
                name=name,
                # The controller sets the rate; until its first tick, max_rate.
                requests=max(1, round(item.max_rate)),
                unit="second",
                algorithm="token_bucket",
                descriptor=[item.caller],
                shadow=item.dry_run,
            )
        )
    return document.model_copy(update={"rules": rules, "limits": limits})
