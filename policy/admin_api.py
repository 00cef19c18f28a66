"""The policy admin API under /v1: rules, lists and limits CRUD, evaluation, revision and audit.

Writes go through the same validation as policy files (the whole would-be policy is compiled inside
the store transaction) and are refused with 422 naming the rule and the field.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policy.adapters.base import AuditEntry, BackendUnavailable, ItemKind
from policy.core import documents
from policy.core.adaptive import AdaptiveDoc
from policy.service import PolicyService
from policy.structs import CheckInput, ItemOwnedByFile, PolicyError

__all__ = ["EvaluateRequest", "build_router"]


class EvaluateRequest(BaseModel):
    """A request to judge, in the vocabulary rules use. Nothing is enforced and no quota is consumed."""

    model_config = ConfigDict(extra="forbid")

    method: str = "GET"
    path: str = "/"
    host: str = ""
    scheme: str = "http"
    headers: dict[str, str] = Field(default_factory=dict)
    source_address: str = ""
    source_principal: str = ""
    source_service: str = ""
    source_labels: dict[str, str] = Field(default_factory=dict)
    destination_address: str = ""
    destination_port: int = 0
    destination_service: str = ""
    destination_labels: dict[str, str] = Field(default_factory=dict)
    context: dict[str, str] = Field(default_factory=dict)


class TraceStepOut(BaseModel):
    stage: str
    rule: str
    matched: bool
    note: str = ""


class EvaluateResponse(BaseModel):
    decision: Literal["allow", "deny", "rate_limited"]
    status: int
    rule: str
    revision: int
    dry_run_rules: list[str]
    quotas_consulted: list[str] = Field(description="counter keys a real Check would consume from")
    trace: list[TraceStepOut]
    upstream_headers: dict[str, str]
    response_headers: dict[str, str]
    body: str


class WriteResult(BaseModel):
    revision: int


class RevisionOut(BaseModel):
    revision: int = Field(description="revision enforced by this replica")
    store_revision: int | None = Field(description="latest revision in the store (None if unreachable)")
    store_staleness_seconds: float
    rules: int


_SECTIONS: dict[str, tuple[ItemKind, str, str]] = {
    "rules": ("rule", "rules", "id"),
    "lists": ("list", "lists", "name"),
    "limits": ("limit", "limits", "name"),
    "adaptive": ("adaptive", "adaptive", "name"),
}


def _actor(request: Request) -> str:
    who = request.headers.get("x-remixer-actor", "")[:64]
    host = request.client.host if request.client else "?"
    return f"api:{who}@{host}" if who else f"api@{host}"


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, whatever its content-type says (`curl -d` sends
    form-urlencoded). Read here rather than by FastAPI so that the document's own validation speaks:
    one line per error naming the field, and the item's name taken from the URL."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise HTTPException(status_code=422, detail=f"the body is not JSON{where}: {_reason(exc)}") from None
    if not isinstance(body, dict):
        raise HTTPException(status_code=422, detail="the body must be a JSON object")
    return body


def _reason(exc: ValueError) -> str:
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)


def build_router(service: PolicyService, *, require_writer: Callable[..., Awaitable[None]]) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["policy"])
    store = service.store
    writer = [Depends(require_writer)]

    async def _write(coro: Awaitable[int | None]) -> int | None:
        try:
            revision = await coro
        except ItemOwnedByFile as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        except PolicyError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except BackendUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        await service.reload()
        return revision

    def _items(section: str) -> list[BaseModel]:
        _, attribute, _ = _SECTIONS[section]
        return list(getattr(service.snapshot.document, attribute))

    def _crud(section: str, model: type[BaseModel]) -> None:
        kind, _, key = _SECTIONS[section]

        # The documents' own models type the responses, which puts their schemas in the OpenAPI
        # components; the PUT body refers to the same schema (see `_json_body` for why it is read by hand).
        @router.get(
            f"/{section}",
            response_model=list[model],  # type: ignore[valid-type]
            summary=f"List {section} (as enforced by this replica)",
        )
        async def list_items() -> list[BaseModel]:
            return _items(section)

        @router.get(f"/{section}/{{name}}", response_model=model, summary=f"Get one of the {section}")
        async def get_item(name: str) -> BaseModel:
            for item in _items(section):
                if getattr(item, key) == name:
                    return item
            raise HTTPException(status_code=404, detail=f"{kind} {name!r} not found")

        @router.put(
            f"/{section}/{{name}}",
            dependencies=writer,
            summary=f"Create or replace one of the {section}",
            description=f"The body is a {model.__name__} as in a policy file's `{section}:`; its `{key}` "
            "may be left out (the URL names it).",
            openapi_extra=_body_schema(model),
            responses={413: {"description": "body over server.admin_max_body_bytes"}},
        )
        async def put_item(name: str, request: Request) -> WriteResult:
            body = await _json_body(request)
            body = {**body, key: body.get(key, name)}
            if body[key] != name:
                raise HTTPException(
                    status_code=422, detail=f"{kind} {key} {body[key]!r} does not match the URL {name!r}"
                )
            try:
                parsed = model.model_validate(body)
            except ValidationError as exc:
                raise HTTPException(
                    status_code=422, detail=documents.describe(exc, {section: [body]})
                ) from None
            plain = parsed.model_dump(mode="json", by_alias=True, exclude_defaults=True)
            plain[key] = name
            revision = await _write(
                store.put(kind, name, plain, actor=_actor(request), origin="api", validate=service.validate)
            )
            return WriteResult(revision=revision or 0)

        @router.delete(f"/{section}/{{name}}", dependencies=writer, summary=f"Delete one of the {section}")
        async def delete_item(name: str, request: Request) -> WriteResult:
            revision = await _write(
                store.delete(kind, name, actor=_actor(request), validate=service.validate)
            )
            if revision is None:
                raise HTTPException(status_code=404, detail=f"{kind} {name!r} not found")
            return WriteResult(revision=revision)

    _crud("rules", documents.RuleDoc)
    _crud("lists", documents.ListDoc)
    _crud("limits", documents.LimitDoc)
    _crud("adaptive", AdaptiveDoc)

    @router.post(
        "/evaluate", summary="What would happen to this request (nothing enforced, no quota consumed)"
    )
    async def evaluate(body: EvaluateRequest) -> EvaluateResponse:
        req = CheckInput(
            method=body.method,
            path=body.path,
            host=body.host,
            scheme=body.scheme,
            headers={k.lower(): v for k, v in body.headers.items()},
            source_address=body.source_address,
            source_principal=body.source_principal,
            source_service=body.source_service,
            source_labels=body.source_labels,
            destination_address=body.destination_address,
            destination_port=body.destination_port,
            destination_service=body.destination_service,
            destination_labels=body.destination_labels,
            context=body.context,
            request_id=body.headers.get("x-request-id", ""),
        )
        explained = service.explain(req)
        decision = explained.decision
        return EvaluateResponse(
            decision=decision.kind,
            status=decision.status,
            rule=decision.rule_id,
            revision=service.snapshot.revision,
            dry_run_rules=list(explained.evaluation.dry_run_rules),
            quotas_consulted=list(explained.would_consume),
            trace=[
                TraceStepOut(stage=s.stage, rule=s.rule_id, matched=s.matched, note=s.note)
                for s in explained.evaluation.trace
            ],
            upstream_headers=dict(decision.upstream_headers),
            response_headers=dict(decision.response_headers),
            body=decision.body,
        )

    @router.get("/policy/revision", summary="Enforced and stored policy revision")
    async def revision() -> RevisionOut:
        try:
            stored: int | None = await store.revision()
        except BackendUnavailable:
            stored = None
        snap = service.snapshot
        return RevisionOut(
            revision=snap.revision,
            store_revision=stored,
            store_staleness_seconds=round(service.staleness(), 3),
            rules=snap.rule_count,
        )

    @router.get("/policy/audit", summary="Who changed what, newest first")
    async def audit(
        limit: Annotated[int, Query(ge=1, le=1000, description="how many entries (1-1000)")] = 100,
    ) -> list[AuditEntry]:
        try:
            return list(await store.audit(limit=limit))
        except BackendUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None

    return router
