"""The HTTP service: the JSON API under ``/api/v1`` and the web console, in one app.

``create_app(settings)`` builds it; ``budget api`` serves it with uvicorn. Reads use the
same query functions as the CLI and the query service; writes publish events the way
``BudgetManager`` and ``AlertEngine`` do and return once applied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from budget.config import Settings
from services.api.auth import SESSION_LIFETIME
from services.api.console import console_router
from services.api.console.not_found import install_page_not_found
from services.api.context import ApiServices
from services.api.limits import KeyLimits
from services.api.middleware import AccessLog, BodyLimit, CatchAll, NoNulCharacters
from services.api.problems import install_problem_handlers
from services.api.refusal_first import install_refusal_first
from services.api.routes import api_router, ingest
from services.api.usage_fast_path import UsageFastPath
from services.liveness import Liveness, heartbeat

__all__ = ["MAX_BODY_BYTES", "create_app"]

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20


def create_app(
    settings: Settings,
    *,
    session_secret: str,
    secure_cookies: bool = False,
    services: ApiServices | None = None,
) -> FastAPI:
    """``session_secret`` signs console cookies (every replica needs the same one);
    ``secure_cookies`` marks them HTTPS-only (set it behind TLS). ``services``: already
    open ones (tests), else the app opens its own for its lifetime."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            yield
            return
        async with ApiServices.open(settings) as opened, _beating(settings):
            app.state.services = opened
            yield

    app = FastAPI(
        title="Budget Manager",
        version="1",
        summary="Cost tracking and budget enforcement for AI provider calls",
        description=(
            "Authenticate with `Authorization: Bearer <API key>`. Roles: `viewer` reads,"
            " `admin` also changes policies, rules, alerts and keys, `ingest` only records"
            " usage and checks budgets. Errors are RFC 9457 problem details."
        ),
        lifespan=lifespan,
        # No interactive page: FastAPI's loads Swagger UI from a CDN, unpinned, onto the
        # console's origin; the document itself is served and committed (docs/openapi.json).
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    if services is not None:
        app.state.services = services
    app.state.key_limits = KeyLimits(settings)
    install_problem_handlers(app)
    install_refusal_first(app)
    install_page_not_found(app)
    app.include_router(api_router)
    app.include_router(console_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret,
        session_cookie="budget_session",
        max_age=int(SESSION_LIFETIME.total_seconds()),
        same_site="strict",
        https_only=secure_cookies,
    )
    app.add_middleware(NoNulCharacters)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    (usage_route,) = (
        r for r in ingest.router.routes if getattr(r, "endpoint", None) is ingest.record
    )
    app.add_middleware(UsageFastPath, state=app.state, route=usage_route, limit=MAX_BODY_BYTES)
    app.add_middleware(CatchAll)
    app.add_middleware(AccessLog)
    return app


@contextlib.asynccontextmanager
async def _beating(settings: Settings) -> AsyncIterator[None]:
    """Touch the heartbeat and alive files (if set) while the app's event loop runs: a
    blocked or hung loop lets them age, and ``budget up`` restarts the process
    (``services.stack``)."""
    if settings.heartbeat_file is None and settings.alive_file is None:
        yield
        return
    stop = asyncio.Event()
    beating = asyncio.create_task(
        heartbeat(settings.heartbeat_file, stop, Liveness(), alive=settings.alive_file)
    )
    try:
        yield
    finally:
        stop.set()
        await beating
