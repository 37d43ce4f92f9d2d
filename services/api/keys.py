"""API keys: making one, hashing one, and publishing their creation and revocation.

A key is ``bmk_<key id>_<secret>``; only its SHA-256 is kept (on the log and in the
``api_keys`` projection). A plain hash suffices because keys carry 256 random bits: there
is nothing to guess from a dictionary, so a slow password hash would only slow requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import psycopg
from nats.js import JetStreamContext

from budget.commands import ChangeClient
from budget.config import Settings
from budget.queries import NotApplied
from budget.tracker import UsageTracker
from events import (
    ApiKeyCreated,
    ApiKeyRevoked,
    ApiRole,
    Topology,
    encode,
    headers_for,
    utc_now,
)
from projections.api_keys import ApiKey, list_keys
from projections.database_queries import DatabaseQueries
from services.credentials import write_secret_file

__all__ = [
    "KEY_PREFIX",
    "IssuedKey",
    "KeyAdmin",
    "NewKey",
    "created_event",
    "first_admin_key",
    "hash_key",
    "new_key",
]

KEY_PREFIX = "bmk_"


@dataclass(frozen=True)
class NewKey:
    key_id: str
    key: str
    """Shown once; never stored."""

    @property
    def key_hash(self) -> str:
        return hash_key(self.key)


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    return NewKey(key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def created_event(key: NewKey, name: str, role: ApiRole, by: str | None) -> ApiKeyCreated:
    return ApiKeyCreated(
        occurred_at=utc_now(),
        key_id=key.key_id,
        name=name,
        role=role,
        key_hash=key.key_hash,
        created_by=by,
    )


@dataclass(frozen=True)
class IssuedKey:
    key: NewKey
    event: ApiKeyCreated
    applied: bool
    """False: the key is stored on the log, but the ``api_keys`` worker had not applied it
    when the wait ended; it works once the worker has."""


class KeyAdmin(ChangeClient):
    """Creates and revokes keys; each call returns once the ``api_keys`` projection has
    applied the change, so a revoked key is refused from the next request on (a created
    key is returned even when that wait fails: it is the only copy)."""

    projection = "api_keys"

    def __init__(self, settings: Settings, tracker: UsageTracker, queries: DatabaseQueries):
        super().__init__(settings, tracker, queries=queries)
        self.database = queries

    async def create(self, name: str, role: ApiRole, *, created_by: str | None = None) -> IssuedKey:
        key = new_key()
        event = created_event(key, name, role, created_by)
        stored = await self._publish(event)
        try:
            await self._wait(stored)
        except (NotApplied, psycopg.Error):
            # Stored, so it will work: losing the only copy of its secret would be worse
            # than handing over a key that is not in force yet.
            return IssuedKey(key, event, applied=False)
        return IssuedKey(key, event, applied=True)

    async def revoke(self, key_id: str, *, revoked_by: str | None = None) -> bool:
        """False when there is no live key with this id."""
        keys = await self.keys(key_id)
        if not keys or keys[0].revoked_at is not None:
            return False
        event = ApiKeyRevoked(occurred_at=utc_now(), key_id=key_id, revoked_by=revoked_by)
        await self._publish_and_wait(event)
        return True

    async def keys(self, key_id: str | None = None) -> list[ApiKey]:
        return await self.database.read(lambda conn: list_keys(conn, key_id))


async def first_admin_key(js: JetStreamContext, topology: Topology, path: Path) -> bool:
    """On a stack's first start, create an admin key and keep it in ``path`` (0600), so
    the first person in can sign in and make the others. False if ``path`` exists."""
    if await asyncio.to_thread(path.exists):
        return False
    key = new_key()
    event = created_event(key, "first admin (budget up)", ApiRole.ADMIN, "budget up")
    # Stored on the log first: a key in the file always works once its worker applies it.
    subject = topology.event_subject(event.SUBJECT)
    await js.publish(subject, encode(event), headers=headers_for(event))
    await asyncio.to_thread(write_secret_file, path, key.key + "\n")
    return True
