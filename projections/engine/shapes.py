"""Whether a projection version's tables were built by this release's DDL.

Each version records the digest of the DDL and views it was created with, and of how the
shared ledger it reads keys its rows (``SharedLedger.keys``: a model's key). A release that
changes a projection's tables (a new column, a new ledger), or what its keys are, changes
the digest, and the worker rebuilds that projection from the log before applying
anything: old tables are never written by new code. Versions made before digests were
recorded have none and count as stale, so an upgrade rebuilds each projection once.
"""

from __future__ import annotations

import hashlib

from projections.engine.projection import Connection, Projection

__all__ = ["live_shape_is_current", "shape_of"]

_TEMPLATE_VERSION = 0
"""DDL is version-specific (table suffixes); the digest is taken of one fixed version."""


def shape_of(projection: Projection) -> str:
    statements = [
        *projection.ddl(_TEMPLATE_VERSION),
        *projection.indexes(_TEMPLATE_VERSION),
        *(f"{view}: {query}" for view, query in projection.views(_TEMPLATE_VERSION).items()),
        *([f"keys: {projection.ledger.keys}"] if projection.ledger is not None else []),
    ]
    return hashlib.sha256("\n".join(statements).encode()).hexdigest()[:16]


async def live_shape_is_current(conn: Connection, projection: Projection) -> bool:
    row = await (
        await conn.execute(
            "SELECT c.shape FROM projection_checkpoints c JOIN projection_registry r"
            " ON r.name = c.name AND r.active_version = c.version WHERE c.name = %s",
            (projection.name,),
        )
    ).fetchone()
    return row is not None and row[0] == shape_of(projection)
