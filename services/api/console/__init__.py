"""The web console: server-rendered pages over the same query functions as the API, one
module per page or area. Every router uses ``guard.ConsoleRoute``: pages redirect a
visitor without a session to /login and are never cached."""

from fastapi import APIRouter

from services.api.console import (
    alerts,
    dashboard,
    history,
    keys,
    policies,
    prices,
    reports,
    rules,
    session,
    system,
)

__all__ = ["console_router"]

console_router = APIRouter(include_in_schema=False)
for module in (session, dashboard, policies, history, reports, alerts, rules, prices, system, keys):
    console_router.include_router(module.router)
