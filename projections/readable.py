"""Reading a projection only while its live version has this release's tables.

After an upgrade that changes a projection's tables, its live version is the old release's
until the worker's rebuild swaps the new one in (``engine.rebuild.rebuild_if_reshaped``):
this release's queries would read columns the old tables lack (an error) or values keyed
by the old rule (silently wrong). A reader asks ``readable_position`` first and, until the
swap, tells its user what is happening and when it ends (``Rebuilding``) instead.
"""

from __future__ import annotations

import functools

from projections.engine.projection import Connection
from projections.engine.shapes import shape_of
from projections.registry import get_projection, groups_of

__all__ = ["Rebuilding", "readable_position"]

_LIVE = (
    "SELECT c.stream_seq, c.shape FROM projection_checkpoints c"
    " JOIN projection_registry r ON r.name = c.name AND r.active_version = c.version"
    " WHERE c.name = %s"
)


class Rebuilding(RuntimeError):
    """The live version of a projection was built by another release: it answers once the
    rebuild of this release's worker has gone live. The message says so, and how to follow it."""

    def __init__(self, projection: str) -> None:
        workers = " or ".join(f"`budget worker {w}`" for w in [*groups_of(projection), projection])
        super().__init__(
            f"the {projection} projection is being rebuilt from the event log after an"
            f" upgrade (this release changed its tables); it answers again once the rebuild"
            f" of {workers} has gone live: `budget projections status` shows its progress"
        )
        self.projection = projection


@functools.cache
def _current_shape(name: str) -> str:
    return shape_of(get_projection(name))


async def readable_position(conn: Connection, name: str) -> int:
    """The stream sequence the live version of projection ``name`` has applied up to
    (0 before it has one); ``Rebuilding`` when its tables are another release's."""
    row = await (await conn.execute(_LIVE, (name,))).fetchone()
    if row is None:
        return 0
    position, shape = row
    if shape != _current_shape(name):
        raise Rebuilding(name)
    return int(position)
