"""The JSON API under ``/api/v1``, one module per area."""

from fastapi import APIRouter

from services.api.problems import PROBLEM_RESPONSES
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

__all__ = ["api_router"]

api_router = APIRouter()
api_router.include_router(system.health)
for module in (spend, policies, ingest, history, reports, alerts, rules, catalog, system, keys):
    api_router.include_router(module.router, prefix="/api/v1", responses=PROBLEM_RESPONSES)
