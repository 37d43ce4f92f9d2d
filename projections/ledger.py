"""The one ledger rule for repricing corrections, used by every projection that counts
usage (spend, the alert evaluator's spend, report rollups, history).

Each such projection keeps one row per usage event (its *usage table*: the event's
current cost and where it counts) and a *corrections table* of the corrections it has
applied. A ``UsageRepriced`` correction, taken in log order:

- counts once: the first time its own ``event_id`` is claimed. A re-send (from a spool,
  after JetStream's duplicate window) finds it claimed and changes nothing anywhere;
- sets the corrected event's current cost to its cost. What a projection adds to its
  totals is the difference against the cost the usage table held, so every total is the
  sum of its events' current costs and no bucket can go below zero;
- is booked where the corrected event counts, as its usage table recorded it (time,
  provider, model, user, project), never where the correction says;
- of an event the usage table does not know is refused (``Rejected``): the engine
  dead-letters it with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from events import UsageRepriced
from projections.engine.projection import Applied, Connection, Rejected

__all__ = ["Booked", "Ledger", "corrections_ddl"]


def corrections_ddl(table: str) -> list[str]:
    """The corrections table of a projection: one row per applied correction."""
    return [
        f"""CREATE TABLE {table} (
            event_id uuid PRIMARY KEY,
            stream_seq bigint NOT NULL,
            corrects uuid NOT NULL)""",
        f"CREATE INDEX ON {table} (corrects, stream_seq)",
    ]


@dataclass(frozen=True, slots=True)
class Booked:
    """A correction applied for the first time, with the corrected event as the usage
    table knew it before (``original``: the columns the projection asked for)."""

    applied: Applied
    previous: Decimal | None
    cost_delta: Decimal
    """The correction's cost less ``previous`` (an absent cost counts 0), computed by
    PostgreSQL: its numeric is exact at every digit the contract allows."""
    original: Mapping[str, Any]

    @property
    def correction(self) -> UsageRepriced:
        assert isinstance(self.applied.event, UsageRepriced)
        return self.applied.event

    @property
    def event_id(self) -> uuid.UUID:
        return self.correction.event_id

    @property
    def occurred_at(self) -> datetime:
        """When the corrected event happened (UTC): where the correction is booked."""
        at: datetime = self.original["occurred_at"]
        return at.astimezone(UTC)

    @property
    def unpriced_delta(self) -> int:
        """+1 when a priced event becomes unpriced, -1 the other way round, else 0."""
        return int(self.correction.cost is None) - int(self.previous is None)

    @property
    def changes_totals(self) -> bool:
        return bool(self.cost_delta or self.unpriced_delta)


@dataclass(frozen=True, slots=True)
class Ledger:
    """``usage`` and ``corrections``: physical table names; ``where``: the columns of the
    usage table that say where an event counts (``occurred_at`` among them)."""

    usage: str
    corrections: str
    where: Sequence[str]

    async def correct(
        self,
        conn: Connection,
        batch: Sequence[Applied],
        *,
        also_set: Mapping[str, str] | None = None,
    ) -> list[Booked]:
        """Apply the batch's corrections in log order (after its usage events); the ones
        applied for the first time, with what they corrected. ``also_set``: more usage
        table columns to set, column -> attribute of the correction (as JSON for models).

        Raises ``Rejected`` naming every correction of an unknown event in the batch."""
        corrections = [(a, e) for a in batch if (e := a.event_of(UsageRepriced)) is not None]
        await self._refuse_unknown(conn, corrections)
        booked = []
        for applied, event in corrections:
            found = await self._correct_one(conn, applied, event, also_set or {})
            if found is not None:
                booked.append(found)
        return booked

    async def _refuse_unknown(
        self, conn: Connection, corrections: Sequence[tuple[Applied, UsageRepriced]]
    ) -> None:
        """One query for the batch: the engine re-applies it once without the unknown ones."""
        if not corrections:
            return
        cursor = await conn.execute(
            f"""SELECT id FROM unnest(%s::uuid[]) AS c(id)
            WHERE NOT EXISTS (SELECT FROM {self.usage} WHERE event_id = c.id)""".encode(),
            ([event.corrects for _, event in corrections],),
        )
        unknown = {row[0] for row in await cursor.fetchall()}
        rejects = {a.stream_seq: _unknown(e) for a, e in corrections if e.corrects in unknown}
        if rejects:
            raise Rejected(next(iter(rejects.values())), rejects=rejects)

    async def _correct_one(
        self,
        conn: Connection,
        applied: Applied,
        event: UsageRepriced,
        also_set: Mapping[str, str],
    ) -> Booked | None:
        extra = "".join(f", {column} = %({column})s" for column in also_set)
        returning = ", ".join(f"t.{column}" for column in self.where)
        cursor = await conn.execute(
            f"""
            WITH target AS (
                SELECT event_id, cost, {", ".join(self.where)} FROM {self.usage}
                WHERE event_id = %(corrects)s FOR UPDATE
            ), claimed AS (
                INSERT INTO {self.corrections} (event_id, stream_seq, corrects)
                SELECT %(id)s, %(seq)s, event_id FROM target
                ON CONFLICT (event_id) DO NOTHING RETURNING event_id
            ), updated AS (
                UPDATE {self.usage} SET cost = %(cost)s{extra}
                WHERE event_id = %(corrects)s AND EXISTS (SELECT FROM claimed)
                RETURNING event_id
            )
            SELECT EXISTS (SELECT FROM updated), t.cost,
                   coalesce(%(cost)s::numeric, 0) - coalesce(t.cost, 0), {returning}
            FROM target t
            """.encode(),
            {
                "id": event.event_id,
                "seq": applied.stream_seq,
                "corrects": event.corrects,
                "cost": event.cost,
                **{column: _value(event, name) for column, name in also_set.items()},
            },
        )
        row = await cursor.fetchone()
        if row is None:
            raise Rejected(_unknown(event))
        fresh, previous, cost_delta, *where = row
        if not fresh:
            return None  # applied before: a re-send
        return Booked(applied, previous, cost_delta, dict(zip(self.where, where, strict=True)))


def _unknown(event: UsageRepriced) -> str:
    return (
        f"correction {event.event_id} repriced usage event {event.corrects},"
        " which this projection has not recorded"
    )


def _value(event: UsageRepriced, name: str) -> object:
    value = getattr(event, name)
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    return value
