"""What every ``budget`` subcommand shares: the settings the top-level options loaded."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from budget.config import Settings
from budget.tracker import UsageTracker, start_usage_tracker

__all__ = ["settings", "tracker", "use_settings"]

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
