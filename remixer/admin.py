"""The admin HTTP app: the parts' /v1 routers, /metrics, /healthz, /readyz, and the write-token guard."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from remixer.exposition import render
from remixer.parts import Readiness

log = logging.getLogger("remixer.admin")


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


def token_guard(token: str) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency: 401 without a bearer token, 403 with a wrong one."""
    bearer = HTTPBearer(auto_error=False)

    async def require_writer(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                status_code=401,
                detail="admin writes need 'Authorization: Bearer <token>' (server.admin_token)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(status_code=403, detail="admin token not accepted")

    return require_writer


def build_admin_app(
    *,
    registry: CollectorRegistry,
    routers: Sequence[Any],
    readiness: Callable[[], dict[str, Readiness]],
    alive: Callable[[], bool],
) -> FastAPI:
    app = FastAPI(
        title="remixer admin API",
        version="0.1.0",
        description="Policies (rules, lists, limits), evaluation, the service graph, and remixer's health.",
    )
    for router in routers:
        app.include_router(router)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

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
