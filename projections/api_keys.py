"""HTTP API keys: name, role and hash of each key, and when it was revoked.

The HTTP service looks a presented key up here by its hash, and keeps the live ones it
found until told ``KEYS_CHANGED``: the transaction that applies a revocation notifies it,
and so does a rebuild's swap, so a revocation applies to the very next request once this
projection has applied it (``services.api.key_cache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from events import ApiKeyCreated, ApiKeyRevoked, ApiRole
from projections.engine.projection import Applied, Connection, Projection, physical

__all__ = [
    "KEYS_CHANGED",
    "ApiKey",
    "ApiKeysProjection",
    "find_key",
    "find_session_key",
    "list_keys",
]

KEYS_CHANGED = "budget_api_keys_changed"
"""The PostgreSQL notification channel told when a key is revoked."""


class ApiKeysProjection(Projection):
    name: ClassVar[str] = "api_keys"
    tables = ("api_keys",)
    event_types = (ApiKeyCreated, ApiKeyRevoked)

    def ddl(self, version: int) -> list[str]:
        table = physical("api_keys", version)
        return [
            f"""CREATE TABLE {table} (
                key_id text PRIMARY KEY,
                key_hash text NOT NULL UNIQUE,
                name text NOT NULL,
                role text NOT NULL,
                created_by text,
                created_at timestamptz NOT NULL,
                revoked_at timestamptz,
                revoked_by text)"""
        ]

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        table = physical("api_keys", version)
        for applied in batch:
            event = applied.event
            if isinstance(event, ApiKeyCreated):
                await conn.execute(
                    f"INSERT INTO {table} (key_id, key_hash, name, role, created_by, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING".encode(),
                    (
                        event.key_id,
                        event.key_hash,
                        event.name,
                        event.role.value,
                        event.created_by,
                        event.occurred_at,
                    ),
                )
            elif isinstance(event, ApiKeyRevoked):
                # The first revocation stands: a re-sent one changes nothing.
                await conn.execute(
                    f"UPDATE {table} SET revoked_at = %s, revoked_by = %s"
                    " WHERE key_id = %s AND revoked_at IS NULL".encode(),
                    (event.occurred_at, event.revoked_by, event.key_id),
                )
        if any(isinstance(applied.event, ApiKeyRevoked) for applied in batch):
            await _tell_key_caches(conn)

    async def went_live(self, conn: Connection, version: int, *, after_seq: int) -> None:
        # The version made live may hold revocations the one it replaces had not applied.
        await _tell_key_caches(conn)


async def _tell_key_caches(conn: Connection) -> None:
    """Delivered when the transaction commits, to every HTTP service's key cache."""
    await conn.execute(f"NOTIFY {KEYS_CHANGED}".encode())


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    role: ApiRole
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None


_COLUMNS = "key_id, name, role, created_by, created_at, revoked_at"


def _key(row: tuple[object, ...]) -> ApiKey:
    key_id, name, role, created_by, created_at, revoked_at = row
    return ApiKey(
        str(key_id),
        str(name),
        ApiRole(str(role)),
        None if created_by is None else str(created_by),
        created_at,  # type: ignore[arg-type]
        revoked_at,  # type: ignore[arg-type]
    )


async def find_key(
    conn: Connection, *, key_hash: str | None = None, key_id: str | None = None
) -> ApiKey | None:
    """The live (not revoked) key with this hash, or with this id."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE revoked_at IS NULL"
        " AND (%s::text IS NULL OR key_hash = %s) AND (%s::text IS NULL OR key_id = %s)"
        " AND (%s::text IS NOT NULL OR %s::text IS NOT NULL)".encode(),
        (key_hash, key_hash, key_id, key_id, key_hash, key_id),
    )
    row = await cursor.fetchone()
    return None if row is None else _key(row)


async def find_session_key(conn: Connection, session_id: str, max_age: timedelta) -> ApiKey | None:
    """The live key behind a console session that has not ended nor passed ``max_age``."""
    columns = ", ".join(f"k.{c}" for c in _COLUMNS.split(", "))
    cursor = await conn.execute(
        f"SELECT {columns} FROM console_sessions s JOIN api_keys k USING (key_id)"
        " WHERE s.session_id = %s AND s.ended_at IS NULL AND s.started_at > now() - %s"
        " AND k.revoked_at IS NULL".encode(),
        (session_id, max_age),
    )
    row = await cursor.fetchone()
    return None if row is None else _key(row)


async def list_keys(conn: Connection, key_id: str | None = None) -> list[ApiKey]:
    """Every key (revoked ones too), oldest first, or the one with ``key_id``."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE (%s::text IS NULL OR key_id = %s)"
        " ORDER BY created_at, key_id".encode(),
        (key_id, key_id),
    )
    return [_key(row) for row in await cursor.fetchall()]
