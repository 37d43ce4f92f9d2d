"""``budget api-key``: create, list and revoke the HTTP API's keys."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import typer

from events import ApiRole
from events.access import KeyId
from projections.api_keys import list_keys
from services.api.keys import IssuedKey, KeyAdmin
from services.cli_context import checked, database_queries, settings, tracker

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="API keys for the HTTP API and the web console (roles: viewer, admin, ingest).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@contextlib.asynccontextmanager
async def _admin() -> AsyncIterator[KeyAdmin]:
    async with tracker() as started, database_queries() as queries:
        yield KeyAdmin(settings(), started, queries)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="who or what uses it, e.g. 'billing-service'")],
    role: Annotated[ApiRole, typer.Option(help="viewer reads; admin changes; ingest records")],
) -> None:
    """Create a key and print it once: only its hash is kept. If the api_keys worker has
    not applied it in time, the key is printed all the same (it is stored, and works once
    the worker applies it) with a warning on stderr."""
    if not name.strip() or len(name) > 200:
        raise ValueError("--name must be 1 to 200 characters")

    async def go() -> IssuedKey:
        async with _admin() as admin:
            return await admin.create(name, role, created_by="cli")

    issued = asyncio.run(go())
    key_id = issued.key.key_id
    typer.echo(f"{issued.key.key}\n(key id {key_id}, role {role.value}; shown once, store it now)")
    if not issued.applied:
        typer.echo(
            f"budget: warning: key {key_id} is stored but not in force yet: it works once"
            " `budget worker api_keys` (or `budget up`) has applied it;"
            " `budget api-key list` shows it then",
            err=True,
        )


@keys_app.command("list")
def list_command() -> None:
    """Every key with its id, name, role and state (never the key itself)."""

    async def go() -> None:
        async with database_queries() as queries, queries.connection() as conn:
            keys = await list_keys(conn)
        typer.echo(f"{'key id':<14} {'role':<7} {'created':<20} {'state':<8} name")
        for k in keys:
            state = "revoked" if k.revoked_at else "live"
            typer.echo(f"{k.key_id:<14} {k.role.value:<7} {k.created_at:%F %T} {state:<8} {k.name}")

    asyncio.run(go())


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(callback=checked(KeyId), help="the key id `list` shows")],
) -> None:
    """Revoke a key: the HTTP API refuses it from the next request on (its processes are
    told within milliseconds once the api_keys worker has applied it)."""

    async def go() -> bool:
        async with _admin() as admin:
            return await admin.revoke(key_id, revoked_by="cli")

    if not asyncio.run(go()):
        raise ValueError(f"there is no live key {key_id!r}; `budget api-key list` shows them")
    typer.echo(f"key {key_id} revoked")
