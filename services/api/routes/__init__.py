"""The JSON API under ``/api/v1``, one module per area."""

from fastapi import APIRouter, Depends

from services.api.problems import PROBLEM_RESPONSES
from services.api.query_names import known_query_parameters
from services.api.routes import (
    alerts,
    catalog,
    history,
    ingest,
    keys,
    policies,
    reports,
    rules,
    spend,
    system,
)

__all__ = ["AREAS", "PREFIX", "api_router"]

PREFIX = "/api/v1"
AREAS = (spend, policies, ingest, history, reports, alerts, rules, catalog, system, keys)
"""The modules whose routers answer under ``PREFIX``."""

api_router = APIRouter()
api_router.include_router(system.health)
for module in AREAS:
    api_router.include_router(
        module.router,
        prefix=PREFIX,
        responses=PROBLEM_RESPONSES,
        dependencies=[Depends(known_query_parameters)],
    )
