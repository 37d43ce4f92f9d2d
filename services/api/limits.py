"""Per-key limits on the API's requests, so one API key cannot starve the enforcer, the
query service or the database for the others: the API asks the query service as the
services' own caller, which its per-caller limits (``services.limits``) never limit, so it
applies the same ``CallerLimits`` itself, the caller being the request's key (a console
session's too). The enforcer it asks under each key's own name (``api-key-<key id>``),
and limits there too, across every API replica.

Checks and releases are limited as the enforcer limits a host (``caller_rate``,
``caller_burst``, ``caller_in_flight``), usage posts likewise in a bucket of their own (a
host checks and records each call), and every read a viewer may make as the query service
limits a host (``caller_query_*``); so is every console page a session reads (``admitted``,
used by ``services.api.console.guard``). Admin changes and key management are not limited.
A request over a limit is answered 429 with ``retry_after`` and ``Retry-After``; an
admitted one counts in flight until its answer has been sent (a live alert feed, open all
day in every console tab, only counts against the rate: ``routes.alerts``).
An admitted request's reads take its key's share of the database connections
(``projections.database_queries.asking``): at most half of them at once.

The limits are per API process: replicas each count their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

from fastapi import Request

from budget.config import Settings
from events import ApiRole
from projections.database_queries import asking
from services.api.auth import INGEST, READ, Principal, admits, require
from services.api.problems import Problem
from services.limits import CallerLimits

__all__ = [
    "KeyLimits",
    "admitted",
    "holding",
    "limited",
    "limited_check",
    "limited_read",
    "limited_usage",
]

Group = Literal["checks", "usage", "reads"]


class KeyLimits:
    """The buckets of every key, per group of routes; the app holds one
    (``app.state.key_limits``). The services' own caller, which they exempt, is a NATS
    user name; a key id (12 hex digits) is never mistaken for it."""

    def __init__(self, settings: Settings) -> None:
        self.checks = CallerLimits.of_enforcer(settings)
        self.usage = CallerLimits.of_enforcer(settings)
        self.reads = CallerLimits.of_query_service(settings)


@contextlib.contextmanager
def holding(limits: CallerLimits, principal: Principal) -> Iterator[None]:
    """Inside: ``principal``'s key admitted under ``limits``, counted in flight; past them
    ``Problem(429)`` with ``retry_after``."""
    refusal = limits.admit(principal.key_id)
    if refusal is not None:
        raise Problem(
            429,
            f"too many requests from this API key: {refusal.reason}; retry after"
            f" {refusal.retry_after:.3f}s",
            retry_after=refusal.retry_after,
        )
    try:
        yield
    finally:
        limits.done(principal.key_id)


@contextlib.asynccontextmanager
async def admitted(request: Request, group: Group, principal: Principal) -> AsyncIterator[None]:
    """``holding`` the key under its ``group`` limits (async, for FastAPI's dependencies)."""
    with holding(getattr(request.app.state.key_limits, group), principal):
        yield


def limited(group: Group, *roles: ApiRole) -> Callable[[Request], AsyncIterator[Principal]]:
    """``require(*roles)``, then the key admitted under its ``group`` limits (else 429)
    until the answer is sent."""
    authorised = require(*roles)

    async def dependency(request: Request) -> AsyncIterator[Principal]:
        principal = await authorised(request)
        async with admitted(request, group, principal):
            asking.set(principal.key_id)  # its reads take the key's share of the connections
            yield principal

    return admits(dependency, roles)


limited_check = limited("checks", *INGEST)
limited_usage = limited("usage", *INGEST)
limited_read = limited("reads", *READ)
