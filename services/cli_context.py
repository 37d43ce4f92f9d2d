"""What every ``budget`` subcommand shares: the settings the top-level options loaded."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError

from budget.config import ConfigError, Settings, load_settings, setting_source, shown_url
from budget.publisher import EventPublisher
from budget.tracker import UsageTracker, start_usage_tracker
from events.queries import query_time
from projections.database_queries import DatabaseQueries
from projections.db import check_database_url
from services.ops import ConnectError

__all__ = [
    "checked",
    "database_queries",
    "load_checked_settings",
    "option_message",
    "query_time_option",
    "require_nats",
    "settings",
    "tracker",
    "use_settings",
    "validation_message",
]

T = TypeVar("T")

_state: dict[str, Settings] = {}


def load_checked_settings(config: str | os.PathLike[str] | None) -> Settings:
    """``load_settings``, and the database URL readable by libpq (``ConfigError`` naming
    where it was set otherwise): checked here, not in the settings, because the public
    API (``budget/``) never imports a database driver."""
    loaded = load_settings(config)
    try:
        check_database_url(loaded.database_url)
    except ValueError as exc:
        raise ConfigError(f"{setting_source('database_url', config)}: {exc}") from None
    return loaded


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


def require_nats(publisher: EventPublisher, outcome: str) -> None:
    """A command fails while NATS is away rather than leave a spool: none of its runs
    lives long enough to send one."""
    if not publisher.connected:
        raise ConnectError(
            f"cannot reach NATS at {shown_url(publisher.config.nats_url)}, or it refused the"
            f" credential; {outcome}. Start it with `budget up`, or check BUDGET_NATS_URL,"
            " BUDGET_NATS_USER and BUDGET_NATS_PASSWORD_FILE"
        )


@contextlib.asynccontextmanager
async def database_queries() -> AsyncIterator[DatabaseQueries]:
    """The CLI reads the projections itself: an operator holds the database's credentials
    and should not need the query service running to look."""
    async with DatabaseQueries(settings().database_url) as queries:
        yield queries


def validation_message(
    exc: ValidationError, subject: str | None = None, options: Mapping[str, str] | None = None
) -> str:
    """Pydantic's first complaint as ``field: what is wrong`` in one line (its own report
    runs to several and ends with a link); ``subject`` names a whole-model complaint;
    ``options``: as for ``option_message``."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or subject or exc.title
    return option_message(where, error["msg"].removeprefix("Value error, "), options or {})


def option_message(field: str, message: str, options: Mapping[str, str]) -> str:
    """``field: message``, naming each field by the command's option that fills it
    (``options``), so the user reads what they typed (``--limit``, not ``limit_amount``):
    ``field`` always, in ``message`` the fields that cannot be an English word (``scope_key``
    can, ``name`` cannot be told from one)."""
    for name, option in options.items():
        if "_" in name:
            message = re.sub(rf"\b{re.escape(name)}\b", option, message)
    return f"{options.get(field, field)}: {message}"


def query_time_option(value: datetime, option: str) -> datetime:
    """``value`` (aware) of ``option`` if a query takes it; else a usage error saying the
    range, before anything connects."""
    try:
        return query_time(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def checked(kind: Any) -> Callable[[T], T]:
    """A typer callback that holds an argument to the contract's type (an id's pattern, a
    non-negative amount) while parsing, so a wrong one is refused before anything connects."""
    adapter: TypeAdapter[object] = TypeAdapter(kind)

    def check(value: T) -> T:
        if value is not None:
            try:
                adapter.validate_python(value)
            except ValidationError as exc:
                raise typer.BadParameter(exc.errors()[0]["msg"]) from None
        return value

    return check
