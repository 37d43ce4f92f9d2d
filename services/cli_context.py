"""What every ``budget`` subcommand shares: the settings the top-level options loaded."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from budget.config import Settings
from budget.tracker import UsageTracker, start_usage_tracker
from projections.database_queries import DatabaseQueries

__all__ = ["database_queries", "settings", "tracker", "use_settings"]

_state: dict[str, Settings] = {}


def use_settings(loaded: Settings) -> None:
    _state["settings"] = loaded


def settings() -> Settings:
    return _state["settings"]


@contextlib.asynccontextmanager
async def tracker() -> AsyncIterator[UsageTracker]:
    """A tracker on the configured servers for one command, closed after it."""
    started = await start_usage_tracker(settings())
    try:
        yield started
    finally:
        await started.close()


@contextlib.asynccontextmanager
async def database_queries() -> AsyncIterator[DatabaseQueries]:
    """The CLI reads the projections itself: an operator holds the database's credentials
    and should not need the query service running to look."""
    async with DatabaseQueries(settings().database_url) as queries:
        yield queries
