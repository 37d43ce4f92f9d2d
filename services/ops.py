"""Operations the CLI and services share: preparing a deployment, connecting to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError

from budget.config import Settings, shown_url
from budget.natsconn import (
    PermissionDenied,
    connect_nats,
    nats_options,
    on_refusal,
    permitted,
    refusal_message,
)
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.log import declare_streams
from projections.engine.projection import Connection
from projections.migrate import migrate
from projections.registry import PROJECTIONS
from services import reservations
from services.database_roles import grant_door_roles

__all__ = ["ConnectError", "CredentialRefused", "database", "nats_client", "prepare"]


class ConnectError(RuntimeError):
    """A server does not answer; the message names it and what to do."""


class CredentialRefused(ConnectError):
    """A server answers but refuses this credential; the message names it and what to do."""


# libpq's words when the server (or libpq itself, for a password it has not got) refuses
# the login, rather than not answering: the fix is the credential, not the server.
_LOGIN_REFUSED = (
    "password authentication failed",
    "no password supplied",
    "pg_hba.conf",
    'role "',
)


async def prepare(nats_url: str, database_url: str, settings: Settings) -> None:
    """Apply migrations, declare the streams (this process is their owner), create every
    projection's first version and the enforcer's SQL function, and grant the network
    doors' roles what they may do (``services.database_roles``): what ``budget migrate``
    and ``budget up`` do. Making a stream takes the NATS ``admin`` credential; another is
    refused at once (``PermissionDenied``, naming it), not after a timeout."""
    await asyncio.to_thread(migrate, database_url)
    async with nats_client(nats_url, settings) as nc:
        streams = declare_streams(nc.jetstream(), settings.topology)
        await permitted(nc, "$JS.API.STREAM.>", streams, needs="admin")
    async with database(database_url) as conn:
        for projection in PROJECTIONS.values():
            await ensure_projection(conn, projection)
        await reservations.install(conn)
        await grant_door_roles(conn)


@contextlib.asynccontextmanager
async def nats_client(
    url: str, settings: Settings | None = None, *, reconnect: bool = False, **callbacks: Any
) -> AsyncIterator[Client]:
    """A connection to ``url`` with ``settings``' credentials and TLS (none without).
    A request that timed out after the server refused this credential a publish raises
    ``PermissionDenied`` saying which credential may.
    With ``reconnect`` (a command that runs until stopped) it reconnects after the first
    connect for as long as it runs; ``callbacks`` go to ``nats.connect``
    (``disconnected_cb``, ``reconnected_cb``)."""
    options = nats_options(settings) if settings is not None else {}
    # Reconnecting, nats-py retries a refused first connect until the bound: the
    # refusal reaches the error callback only.
    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        if not errors:
            errors.append(exc)

    try:
        nc = await connect_nats(
            url,
            within=3,
            allow_reconnect=reconnect,
            max_reconnect_attempts=-1,
            error_cb=remember,
            **options,
            **callbacks,
        )
    except Exception as exc:
        if any("authorization violation" in str(e).lower() for e in (exc, *errors)):
            who = f"user {settings.nats_user!r}" if settings and settings.nats_user else "no user"
            raise CredentialRefused(
                f"NATS at {shown_url(url)} refused the credential ({who}); set"
                " BUDGET_NATS_USER and BUDGET_NATS_PASSWORD_FILE (see docs/security.md)"
            ) from None
        raise ConnectError(
            f"cannot reach NATS at {shown_url(url)} ({str(exc) or type(exc).__name__});"
            " start it with `budget up` or set BUDGET_NATS_URL"
        ) from None
    refused: list[str] = []
    on_refusal(nc, refused.append)
    try:
        yield nc
    except (TimeoutError, NatsError):
        if not refused:
            raise
        # The server said why nothing answered: this credential may not ask.
        topology = settings.topology if settings is not None else None
        user = settings.nats_user if settings is not None else None
        raise PermissionDenied(refusal_message(refused[0], topology=topology, user=user)) from None
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[Connection]:
    try:
        conn = await connect(url)
    except Exception as exc:
        said = str(exc).strip()
        if any(words in said for words in _LOGIN_REFUSED):
            raise CredentialRefused(
                f"PostgreSQL at {shown_url(url)} refused the login ({said}); check the URL's"
                " user and its password (the pgpass file its passfile names, which this user"
                " must be able to read; see docs/security.md)"
            ) from None
        if 'database "' in said and "does not exist" in said:
            raise ConnectError(
                f"PostgreSQL at {shown_url(url)} has no such database ({said}); set"
                " BUDGET_DATABASE_URL to the one `budget up` printed (or `budget migrate` was"
                " run on)"
            ) from None
        raise ConnectError(
            f"cannot reach PostgreSQL at {shown_url(url)} ({said}); start it with "
            "`budget up` or set BUDGET_DATABASE_URL"
        ) from None
    try:
        yield conn
    finally:
        await conn.close()
