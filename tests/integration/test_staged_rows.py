"""A statement over the staged batch reads exactly its events' rows: by range when they are
every staged row in it, else each looked up (a batch applied again without an event a
projection refused). Real PostgreSQL, under the consumers' generic plans."""

from __future__ import annotations

import pytest

from projections.db import connect
from projections.engine.projection import Applied
from projections.usage_rows import COUNTED, STAGED, STAGED_COLUMNS, Staged, stage, staged_rows

from support import usage_event

STAGED_SEQS = [3, 4, 6, 7, 9]
"""Usage events at these sequences are staged; the gaps are other events of the log."""


@pytest.mark.parametrize(
    "asked",
    [
        [3, 4, 6, 7, 9],  # the whole batch
        [6, 7, 9],  # a member past another's checkpoint: the batch's tail
        [4, 6],  # a part of the batch
        [3, 4, 7, 9],  # without one it refused: the range holds a staged row not asked for
        [3, 9],  # only the ends
        [7],
    ],
)
async def test_a_statement_reads_exactly_the_events_it_is_given(db: str, asked: list[int]) -> None:
    conn = await connect(db)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        events = {seq: Applied.of(seq, usage_event()) for seq in STAGED_SEQS}
        async with conn.transaction():
            await stage(conn, list(events.values()))
            staged = Staged.of([events[seq] for seq in asked])
            assert staged is not None
            for _ in range(6):  # past psycopg's threshold: a prepared, generic plan too
                cursor = await conn.execute(
                    f"SELECT stream_seq FROM {STAGED} b WHERE {staged_rows('b')}"
                    " ORDER BY stream_seq".encode(),
                    staged.params,
                )
                assert [seq for (seq,) in await cursor.fetchall()] == asked
    finally:
        await conn.close()


async def test_the_counted_columns_are_staged_alone_and_in_full(db: str) -> None:
    """``COUNTED`` names the first columns, which a counted-only staging fills."""
    event = usage_event()
    names = ", ".join(name for name, _ in STAGED_COLUMNS)
    conn = await connect(db)
    try:
        async with conn.transaction():
            await stage(conn, [Applied.of(1, event)], counted_only=True)
            await stage(conn, [Applied.of(2, event)])
            cursor = await conn.execute(f"SELECT {names} FROM {STAGED} ORDER BY stream_seq")
            counted, full = await cursor.fetchall()
    finally:
        await conn.close()
    assert counted[:COUNTED] == (event.event_id, 1, *full[2:COUNTED])
    assert counted[COUNTED:] == (None,) * (len(STAGED_COLUMNS) - COUNTED)
    assert None not in (full[2], full[3], full[8]), "time, provider and cost are staged"


def test_no_usage_events_give_no_staged_rows_to_read() -> None:
    assert Staged.of([]) is None
