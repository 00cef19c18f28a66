"""The admin HTTP app: the parts' /v1 routers, /metrics, /healthz, /readyz, /docs, and the write-token guard.

What must be decided before a body is read happens in `AdminApp.__call__`, ahead of FastAPI (which reads
and parses a body before it runs a route's dependencies): a write without a valid token is refused
unread, a body declaring more than `max_body_bytes` is refused unread (and one that streams past it is
cut off by FastAPI's body limit), and a JSON body is read as JSON whatever its content-type says.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from remixer.kit.exposition import render
from remixer.kit.parts import Readiness

log = logging.getLogger("remixer.kit.admin")

DOCS_ASSETS = "/docs-assets"


def ensure_admin_token(configured: str | None, data_dir: Path) -> str:
    """The configured token, or one generated once into DATA_DIR/admin-token (0600). Never logged."""
    if configured:
        return configured
    path = data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    log.info("generated an admin token for API writes path=%s", path)
    return token


_BEARER = HTTPBearer(auto_error=False)


class WriterGuard:
    """The bearer-token check of admin writes: 401 without a bearer token, 403 with a wrong one.

    A FastAPI dependency (so OpenAPI shows the security scheme), and `refusal`, which `AdminApp` runs on
    the request's headers before anything reads the body."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def refusal(self, authorization: str | None) -> HTTPException | None:
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return HTTPException(
                status_code=401,
                detail="admin writes need 'Authorization: Bearer <token>' (server.admin_token)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(credentials.strip().encode(), self._token):
            return HTTPException(status_code=403, detail="admin token not accepted")
        return None

    async def __call__(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER),  # noqa: B008
    ) -> None:
        refused = self.refusal(request.headers.get("authorization"))
        if refused is not None:
            raise refused


def token_guard(token: str) -> WriterGuard:
    """The FastAPI dependency routers put on write endpoints (`dependencies=[Depends(guard)]`)."""
    return WriterGuard(token)


def _guards(dependant: Dependant) -> Iterator[WriterGuard]:
    for dependency in dependant.dependencies:
        if isinstance(dependency.call, WriterGuard):
            yield dependency.call
        yield from _guards(dependency)


class AdminApp(FastAPI):
    """FastAPI with the checks that must not wait for the body (see the module docstring)."""

    def __init__(self, *, routers: Sequence[APIRouter], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The routers' own routes (full paths), matched here before FastAPI routes the request.
        self._edge_routes = [
            (route, list(_guards(route.dependant)))
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute)
        ]
        for router in routers:
            self.include_router(router)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route, guards = self._route(scope)
            refused = self._refusal(scope, guards)
            if refused is not None:
                response = JSONResponse(
                    {"detail": refused.detail}, status_code=refused.status_code, headers=refused.headers
                )
                await response(scope, receive, send)
                return
            if route is not None and route.body_field is not None:
                scope = _as_json(scope)
        await super().__call__(scope, receive, send)

    def _route(self, scope: Scope) -> tuple[APIRoute | None, list[WriterGuard]]:
        for route, guards in self._edge_routes:
            if route.matches(scope)[0] is Match.FULL:
                return route, guards
        return None, []

    def _refusal(self, scope: Scope, guards: list[WriterGuard]) -> HTTPException | None:
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        for guard in guards:
            refused = guard.refusal(authorization)
            if refused is not None:
                return refused
        limit = self.max_body_size
        length = headers.get(b"content-length", b"")
        if limit is not None and length.isdigit() and int(length) > limit:
            return _too_large(limit)
        return None


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status_code=413, detail=f"request body over {limit} bytes (server.admin_max_body_bytes)"
    )


def _as_json(scope: Scope) -> Scope:
    """Bodies of the admin API are JSON: `curl -d` (form-urlencoded) or no content-type reads as JSON."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def build_admin_app(
    *,
    registry: CollectorRegistry,
    routers: Sequence[APIRouter],
    readiness: Callable[[], dict[str, Readiness]],
    alive: Callable[[], bool],
    max_body_bytes: int = 4 << 20,
    exposition: Callable[[], bytes] | None = None,
) -> AdminApp:
    """`exposition`: the /metrics body, when it is more than this registry (all workers')."""
    app = AdminApp(
        routers=routers,
        title="remixer admin API",
        version="0.1.0",
        description="Policies (rules, lists, limits), evaluation, the service graph, and remixer's health.",
        max_body_size=max_body_bytes,
        # Served below from the swagger-ui-bundle package: the page must work without reaching any CDN.
        docs_url=None,
        redoc_url=None,
    )

    async def body_too_large(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 413:
            exc = _too_large(max_body_bytes)
        return await http_exception_handler(request, exc)  # type: ignore[arg-type]

    app.add_exception_handler(413, body_too_large)
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            # Swagger UI's default validator badge loads an image from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body = exposition() if exposition is not None else render(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"])
    def healthz() -> Response:
        ok = alive()
        return Response(
            "ok\n" if ok else "stopping\n", status_code=200 if ok else 503, media_type="text/plain"
        )

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request) -> Response:
        states = readiness()
        ready = alive() and all(s.ready for s in states.values())
        lines = [
            f"{name}: {'ok' if s.ready else 'not ready'}{' - ' + s.detail if s.detail else ''}"
            for name, s in sorted(states.items())
        ]
        return Response("\n".join(lines) + "\n", status_code=200 if ready else 503, media_type="text/plain")

    return app
