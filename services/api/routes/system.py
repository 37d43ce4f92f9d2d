"""Health, readiness, projections' status and lag, dead letters, the services' health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from nats.aio.client import Client
from pydantic import BaseModel

from projections.engine.deadletter import DeadLetter, recent_dead_letters
from projections.queries import ProjectionStatus, projection_status
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.limits import limited_read
from services.api.problems import LIMITED_RESPONSES, Problem
from services.probes import probe_services

__all__ = ["ServiceHealth", "health", "router", "service_health"]

health = APIRouter(route_class=ExactJsonRoute, tags=["health"])
router = APIRouter(
    route_class=ExactJsonRoute,
    tags=["system"],
    dependencies=[Depends(limited_read)],
    responses=LIMITED_RESPONSES,
)
Api = Annotated[ApiServices, Depends(current_services)]
_ASK_WITHIN = 2.0


class ServiceHealth(BaseModel):
    name: str
    ok: bool
    detail: str


@health.get("/healthz", summary="The process is up (no credentials needed)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get(
    "/readyz",
    summary="NATS and PostgreSQL are reachable (503 otherwise; no credentials needed)",
    responses={503: {"description": "a dependency is unreachable"}},
)
async def readyz(api: Api) -> JSONResponse:
    checks = {s.name: s.ok for s in await _dependencies(api)}
    status = 200 if all(checks.values()) else 503
    return JSONResponse({"ready": status == 200, "checks": checks}, status)


@router.get("/projections", summary="Each projection's version, checkpoint, lag, newest event")
async def projections(api: Api) -> list[ProjectionStatus]:
    nc = _nats(api)
    return await api.database.read(
        lambda conn: projection_status(conn, nc.jetstream(), api.settings.topology)
    )


@router.get("/dead-letters", summary="Malformed messages with the reason, newest first")
async def dead_letters(
    api: Api,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=1, description="a dead letter's seq")] = None,
) -> list[DeadLetter]:
    js = _nats(api).jetstream()
    return await recent_dead_letters(js, api.settings.topology, limit=limit, before=before)


@router.get("/services", summary="NATS, PostgreSQL, the enforcer and the query service")
async def service_health(api: Api) -> list[ServiceHealth]:
    found = await _dependencies(api)
    for probe in await probe_services(api.nc, api.settings, _ASK_WITHIN):
        found.append(ServiceHealth(name=probe.name, ok=probe.ok, detail=probe.detail))
    return found


async def _dependencies(api: ApiServices) -> list[ServiceHealth]:
    nc = api.nc
    nats_ok = nc is not None and nc.is_connected
    result = [
        ServiceHealth(name="nats", ok=nats_ok, detail="connected" if nats_ok else "not connected")
    ]
    try:
        async with api.database.connection() as conn:
            await conn.execute("SELECT 1")
        result.append(ServiceHealth(name="postgresql", ok=True, detail="answers"))
    except Exception as exc:  # any failure means not ready; the reason is shown, not raised
        result.append(ServiceHealth(name="postgresql", ok=False, detail=type(exc).__name__))
    return result


def _nats(api: ApiServices) -> Client:
    nc = api.nc
    if nc is None or not nc.is_connected:
        raise Problem(503, "NATS is unreachable")
    return nc
