"""The usage ledger: one row per usage event and per repricing correction, in log order;
the one place where duplicates and corrections are decided for every projection that
counts usage (spend, history, report rollups, the alert evaluator).

A usage event counts where the ledger holds it at its own stream sequence: its first
appearance in the log. A later re-send (from a spool, after JetStream's duplicate window)
finds the row taken and counts nowhere. A ``UsageRepriced`` correction, taken in log order:

- counts once: at its first appearance, as for usage;
- sets the corrected event's current cost to its cost; the ledger keeps the difference
  against the cost current before it (``cost_delta``), so every total is the sum of its
  events' current costs and no bucket can go below zero;
- is booked where the corrected event counts, as the ledger recorded it (time, provider,
  model, user, project, kind), never where the correction says;
- of an event the ledger does not know at the correction's place in the log (unknown, or
  only later in the log, even in the same batch) is refused (``Rejected``): the engine
  dead-letters it, so the verdict never depends on how the log was split into batches.

Every row is a function of the log up to it, whoever writes it first: a projection rebuilt
alone finds the rows the live ones wrote and reads the same verdicts. Writers record in
log order; ``usage_ledger_position`` says how far each has recorded, so a rebuild that is
behind reads instead of writing (and still moves its position).

Spend, history and report rollups read each batch's staged rows joined to the ledger; the
alert evaluator reads the ledger's rows alone (``COUNTING_LEDGER``, ``Recorded``): what
another consumer recorded it neither decodes nor stages (see ``reads_recorded``).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from events import UsageRepriced
from projections.engine.projection import Applied, Connection, Rejected
from projections.usage_rows import KEYS, STAGED, Staged, staged_rows
from projections.usage_rows import stage as stage_rows

__all__ = [
    "COUNTING_LEDGER",
    "SHARED_LEDGER",
    "WHERE",
    "Booked",
    "Ledger",
    "Recorded",
    "first_usage",
    "recorded_usage",
]

WHERE = ("occurred_at", "provider", "model", "user_id", "project_id", "kind")
"""Where a usage event counts, as the ledger keeps it for its corrections: ``provider`` and
``model`` are their keys (``usage_rows``' ``provider_key`` and ``model_key``), as spend is
counted by provider and model."""


def first_usage(usage: str) -> str:
    """The rows of ``usage_batch`` (as ``b``) given by the parameters ``Staged.params``
    (``usage_rows.staged_rows``) that are their event's first appearance."""
    return (
        f"{STAGED} b JOIN {usage} led ON led.event_id = b.event_id"
        f" AND led.stream_seq = b.stream_seq WHERE {staged_rows('b')}"
    )


def recorded_usage(usage: str, alias: str) -> str:
    """The ledger's usage rows (as ``alias``) at the stream sequences ``Recorded.params``
    gives: the segment's usage events at their first appearance."""
    return (
        "unnest(%(runs_lo)s::bigint[], %(runs_hi)s::bigint[]) AS runs(lo, hi)"
        f" JOIN {usage} {alias} ON {alias}.stream_seq BETWEEN runs.lo AND runs.hi"
    )


@dataclass(frozen=True, slots=True)
class Recorded:
    """A segment of the log as its runs of consecutive stream sequences (a segment is
    usually one run; a skipped or refused event splits it), for ``recorded_usage``: a
    range scan per run finds the ledger rows, where a list of every sequence would be
    compared row by row in a generic plan (``usage_rows.staged_rows``)."""

    lo: list[int]
    hi: list[int]

    @classmethod
    def of(cls, segment: Sequence[Applied]) -> Recorded:
        lo: list[int] = []
        hi: list[int] = []
        for seq in sorted(a.stream_seq for a in segment):
            if hi and seq == hi[-1] + 1:
                hi[-1] = seq
            else:
                lo.append(seq)
                hi.append(seq)
        return cls(lo, hi)

    @property
    def params(self) -> dict[str, Any]:
        return {"runs_lo": self.lo, "runs_hi": self.hi}


@dataclass(frozen=True, slots=True)
class Booked:
    """A correction at its first appearance, with the corrected event as the ledger knew it
    before (``original``: ``WHERE``'s columns)."""

    applied: Applied
    previous: Decimal | None
    cost_delta: Decimal
    """The correction's cost less ``previous`` (an absent cost counts 0), computed by
    PostgreSQL: its numeric is exact at every digit the contract allows."""
    unpriced_delta: int
    """+1 when a priced event becomes unpriced, -1 the other way round, else 0."""
    original: Mapping[str, Any]

    @property
    def correction(self) -> UsageRepriced:
        event = self.applied.event
        assert isinstance(event, UsageRepriced)
        return event

    @property
    def event_id(self) -> uuid.UUID:
        return self.correction.event_id

    @property
    def occurred_at(self) -> datetime:
        """When the corrected event happened (UTC): where the correction is booked."""
        at: datetime = self.original["occurred_at"]
        return at.astimezone(UTC)

    @property
    def changes_totals(self) -> bool:
        return bool(self.cost_delta or self.unpriced_delta)


@dataclass(frozen=True, slots=True)
class Ledger:
    """``usage``, ``corrections`` and ``position`` (how far each writer has recorded):
    table names. ``counted_only``: batches are staged with only what counting needs
    (``usage_rows.COUNTED``). ``reads_recorded``: the projections read the ledger's rows
    (``recorded_usage``), not the staged batch, so only what the ledger lacks is staged,
    and the runner decodes usage only when the ledger lacks some of it
    (``SharedLedger.reads_recorded``)."""

    usage: str
    corrections: str
    position: str
    counted_only: bool = False
    reads_recorded: bool = False

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.usage, self.corrections, self.position)

    @property
    def keys(self) -> str:
        return KEYS

    def ddl(self) -> list[str]:
        return [
            # ``cost``: the event's own; corrections hold the later ones. ``provider``,
            # ``model``: their keys (``canonical_key``), however the event spelt them.
            f"""CREATE TABLE {self.usage} (
                event_id uuid PRIMARY KEY,
                stream_seq bigint NOT NULL,
                occurred_at timestamptz NOT NULL,
                cost numeric,
                provider text NOT NULL,
                model text NOT NULL,
                kind text NOT NULL,
                user_id text,
                project_id text,
                reservation_id text)""",
            f"CREATE INDEX ON {self.usage} (reservation_id) WHERE reservation_id IS NOT NULL",
            f"CREATE INDEX ON {self.usage} (stream_seq)",  # recorded_usage
            f"""CREATE TABLE {self.corrections} (
                event_id uuid PRIMARY KEY,
                stream_seq bigint NOT NULL,
                corrects uuid NOT NULL,
                cost numeric,
                previous numeric,
                cost_delta numeric NOT NULL,
                unpriced_delta integer NOT NULL)""",
            f"CREATE INDEX ON {self.corrections} (corrects, stream_seq)",
            f"CREATE TABLE {self.position} (writer text PRIMARY KEY, stream_seq bigint NOT NULL)",
        ]

    async def stage(
        self, conn: Connection, batch: Sequence[Applied], *, writer: str
    ) -> Callable[[], Awaitable[None]]:
        """Stage the batch's usage (``usage_rows.stage``: the projections read it there;
        with ``reads_recorded``, only what is not recorded yet), and return what records
        its usage and corrections not recorded yet, in log order, to be awaited next in
        the same transaction. Staging copies (COPY), which a pipeline cannot carry;
        recording reads nothing back but for corrections, so the runner pipelines it with
        the projections' statements.

        Recording raises ``Rejected`` naming every correction of an unknown event in the
        batch."""
        covered = await self.recorded_through(conn) if batch else 0
        # With ``reads_recorded``, what is recorded is neither staged nor decoded.
        todo = [a for a in batch if a.stream_seq > covered] if self.reads_recorded else batch
        staged = await stage_rows(conn, todo, counted_only=self.counted_only)

        async def record() -> None:
            if batch:
                await self._record(conn, batch, covered, staged, writer=writer)

        return record

    async def record(self, conn: Connection, batch: Sequence[Applied], *, writer: str) -> None:
        """``stage`` the batch and record it at once (a part of a batch the runner applies
        isolating, a test, a benchmark)."""
        await (await self.stage(conn, batch, writer=writer))()

    async def _record(
        self,
        conn: Connection,
        batch: Sequence[Applied],
        covered: int,
        staged: Staged | None,
        *,
        writer: str,
    ) -> None:
        if staged is not None and batch[-1].stream_seq > covered:
            await conn.execute(
                f"""INSERT INTO {self.usage} (event_id, stream_seq, occurred_at, cost, provider,
                    model, kind, user_id, project_id, reservation_id)
                SELECT DISTINCT ON (event_id) event_id, stream_seq, occurred_at, cost,
                    provider_key, model_key, kind, user_id, project_id, reservation_id
                FROM {STAGED} WHERE {staged_rows()} AND stream_seq > %(covered)s
                ORDER BY event_id, stream_seq
                ON CONFLICT (event_id) DO NOTHING""".encode(),
                {**staged.params, "covered": covered},
            )
        corrections = [a for a in batch if a.event_type is UsageRepriced]
        if corrections:
            await self._record_corrections(conn, corrections, covered)
        # Also when behind: a writer that reads what it finds recorded still shows that it
        # is moving (a runner that reads the ledger waits for such a writer).
        await conn.execute(
            f"INSERT INTO {self.position} VALUES (%s, %s) ON CONFLICT (writer)"
            f" DO UPDATE SET stream_seq = GREATEST({self.position}.stream_seq,"
            " EXCLUDED.stream_seq)".encode(),
            (writer, batch[-1].stream_seq),
        )

    async def booked(self, conn: Connection, batch: Sequence[Applied]) -> list[Booked]:
        """The batch's corrections at their first appearance, in log order (recorded)."""
        corrections = {a.stream_seq: a for a in batch if a.event_type is UsageRepriced}
        if not corrections:
            return []
        where = ", ".join(f"u.{column}" for column in WHERE)
        cursor = await conn.execute(
            f"""SELECT c.stream_seq, c.previous, c.cost_delta, c.unpriced_delta, {where}
            FROM {self.corrections} c JOIN {self.usage} u ON u.event_id = c.corrects
            WHERE c.stream_seq = ANY(%s) AND c.event_id = ANY(%s)
            ORDER BY c.stream_seq""".encode(),
            (list(corrections), [a.event.event_id for a in corrections.values()]),
        )
        return [
            Booked(corrections[seq], previous, delta, unpriced, dict(zip(WHERE, at, strict=True)))
            for seq, previous, delta, unpriced, *at in await cursor.fetchall()
            if seq in corrections
        ]

    async def positions(self, conn: Connection) -> dict[str, int]:
        cursor = await conn.execute(f"SELECT writer, stream_seq FROM {self.position}".encode())
        return {writer: int(seq) for writer, seq in await cursor.fetchall()}

    async def recorded_through(self, conn: Connection) -> int:
        """How far the furthest writer has recorded the log (0: none has)."""
        return max((await self.positions(conn)).values(), default=0)

    async def _record_corrections(
        self, conn: Connection, corrections: Sequence[Applied], covered: int
    ) -> None:
        """Claim each new correction in log order (they are rare: one statement each);
        refuse those of events the ledger does not know, all at once, so the engine
        applies the batch once more without them."""
        cursor = await conn.execute(
            f"""SELECT c.id, c.seq,
                       EXISTS (SELECT FROM {self.corrections} k WHERE k.event_id = c.id),
                       EXISTS (SELECT FROM {self.usage} u
                               WHERE u.event_id = c.corrects AND u.stream_seq < c.seq)
            FROM unnest(%s::uuid[], %s::bigint[], %s::uuid[]) AS c(id, seq, corrects)""".encode(),
            (
                [a.event.event_id for a in corrections],
                [a.stream_seq for a in corrections],
                [_corrected(a) for a in corrections],
            ),
        )
        claimed = {seq: (was, target) for _, seq, was, target in await cursor.fetchall()}
        # Unclaimed below ``covered``: the writer that recorded it refused it.
        rejects = {
            a.stream_seq: _unknown(a)
            for a in corrections
            if not claimed[a.stream_seq][0]
            and (a.stream_seq <= covered or not claimed[a.stream_seq][1])
        }
        if rejects:
            raise Rejected(next(iter(rejects.values())), rejects=rejects)
        for applied in corrections:
            if applied.stream_seq > covered and not claimed[applied.stream_seq][0]:
                await self._claim(conn, applied)

    async def _claim(self, conn: Connection, applied: Applied) -> None:
        event = applied.event
        assert isinstance(event, UsageRepriced)
        # The cost current before it: the latest correction's, else the event's own.
        await conn.execute(
            f"""
            WITH target AS (
                SELECT event_id, cost FROM {self.usage} WHERE event_id = %(corrects)s FOR UPDATE
            ), latest AS (
                SELECT c.cost FROM {self.corrections} c, target t
                WHERE c.corrects = t.event_id ORDER BY c.stream_seq DESC LIMIT 1
            ), before AS (
                SELECT CASE WHEN EXISTS (SELECT FROM latest) THEN (SELECT cost FROM latest)
                            ELSE t.cost END AS cost
                FROM target t
            )
            INSERT INTO {self.corrections}
                (event_id, stream_seq, corrects, cost, previous, cost_delta, unpriced_delta)
            SELECT %(id)s, %(seq)s, %(corrects)s, %(cost)s, cost,
                   coalesce(%(cost)s::numeric, 0) - coalesce(cost, 0),
                   (%(cost)s::numeric IS NULL)::int - (cost IS NULL)::int
            FROM before
            ON CONFLICT (event_id) DO NOTHING
            """.encode(),
            {
                "id": event.event_id,
                "seq": applied.stream_seq,
                "corrects": event.corrects,
                "cost": event.cost,
            },
        )


SHARED_LEDGER = Ledger("usage_ledger", "usage_ledger_corrections", "usage_ledger_position")
"""The ledger of spend, history and report rollups (created by ``budget migrate``)."""
COUNTING_LEDGER = dataclasses.replace(SHARED_LEDGER, counted_only=True, reads_recorded=True)
"""The same ledger as the alert evaluator writes and reads it (``reads_recorded``)."""


def _corrected(applied: Applied) -> uuid.UUID:
    event = applied.event
    assert isinstance(event, UsageRepriced)
    return event.corrects


def _unknown(applied: Applied) -> str:
    event = applied.event
    assert isinstance(event, UsageRepriced)
    return (
        f"correction {event.event_id} repriced usage event {event.corrects},"
        " which this projection has not recorded"
    )
