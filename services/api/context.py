"""What the HTTP service holds while it runs: one tracker (the NATS connection that
publishes usage and asks the enforcer), the database queries, the live keys it has seen,
and the clients that publish changes. Every route reaches them through ``services(request)``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from nats.aio.client import Client

from budget.alerts import AlertEngine
from budget.config import Settings
from budget.manager import BudgetManager
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker, start_usage_tracker
from projections.database_queries import DatabaseQueries
from services.api.key_cache import KeyCache
from services.api.keys import KeyAdmin

__all__ = ["ApiServices", "current_services", "services"]


@dataclass(frozen=True)
class ApiServices:
    settings: Settings
    tracker: UsageTracker
    database: DatabaseQueries
    manager: BudgetManager
    alerts: AlertEngine
    keys: KeyAdmin
    key_cache: KeyCache

    @property
    def registry(self) -> PricingRegistry:
        return self.tracker.registry

    @property
    def nc(self) -> Client | None:
        return self.tracker.publisher.client

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, *, connections: int = 8) -> AsyncIterator[ApiServices]:
        tracker = await start_usage_tracker(settings)
        database = DatabaseQueries(
            settings.database_url, connections=connections, per_caller=max(1, connections // 2)
        )
        key_cache = KeyCache(settings.database_url)
        key_cache.start()
        try:
            yield cls(
                settings=settings,
                tracker=tracker,
                database=database,
                manager=BudgetManager(settings, tracker, queries=database),
                alerts=AlertEngine(settings, tracker, queries=database),
                keys=KeyAdmin(settings, tracker, database),
                key_cache=key_cache,
            )
        finally:
            await key_cache.stop()
            await tracker.close()
            await database.close()


def services(request: Request) -> ApiServices:
    found: ApiServices = request.app.state.services
    return found


async def current_services(request: Request) -> ApiServices:
    """``services`` as a dependency: ``async`` because FastAPI runs a plain function in its
    thread pool, a hop per request."""
    return services(request)
