"""HTTP API keys as events: the key table is a projection like every other view.

Only a key's SHA-256 hash travels on the log; the key itself is shown once, to whoever
created it, and never stored.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from events.envelope import Event
from events.limits import NAME_MAX

__all__ = ["ApiKeyCreated", "ApiKeyRevoked", "ApiRole", "KeyId"]

KeyId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class ApiRole(StrEnum):
    """``viewer`` reads; ``admin`` also changes policies, rules, alerts and keys;
    ``ingest`` only records usage and checks budgets (host apps without NATS)."""

    VIEWER = "viewer"
    ADMIN = "admin"
    INGEST = "ingest"


class ApiKeyCreated(Event):
    SUBJECT: ClassVar[str] = "access.key_created"

    type: Literal["ApiKeyCreated"] = "ApiKeyCreated"
    schema_version: Literal[1] = 1
    key_id: KeyId
    name: str = Field(min_length=1, max_length=NAME_MAX)
    role: ApiRole
    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    created_by: str | None = Field(default=None, max_length=NAME_MAX)


class ApiKeyRevoked(Event):
    SUBJECT: ClassVar[str] = "access.key_revoked"

    type: Literal["ApiKeyRevoked"] = "ApiKeyRevoked"
    schema_version: Literal[1] = 1
    key_id: KeyId
    revoked_by: str | None = Field(default=None, max_length=NAME_MAX)
