"""Runs projection versions from one consumer: read a batch once, decode it once, apply it
to every projection of the runner and advance each one's checkpoint, all in one
transaction; ack after commit. Redeliveries at or below a checkpoint are skipped, which
gives exactly-once effects on at-least-once delivery.

A runner of one projection is what a rebuild uses; a group of projections that read the
same events (spend, history, reports) shares the delivery, the decoding and the usage
ledger, while each keeps its own version, checkpoint and rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.js import JetStreamContext

from events import TimeBounds, Topology
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.deadletter import dead_letter
from projections.engine.isolation import (
    Retired,
    Systemic,
    Unapplied,
    apply_events,
    lone_fault_its_own,
    pipelined,
    whole_batch,
)
from projections.engine.log import LogMark, bind_consumer, message_digest, verify_log
from projections.engine.metrics import DEAD_LETTERS, REASON_KINDS, from_zero
from projections.engine.preparer import Prepared, Preparer
from projections.engine.projection import Applied, Connection, Projection, SharedLedger
from projections.engine.reader import Delivery, PullReader
from projections.engine.writer import (
    Move,
    VersionWriter,
    advance,
    consumer_name,
    lock_checkpoints,
    log_marks,
)
from projections.usage_rows import create_staging

__all__ = [
    "BatchResult",
    "EngineConfig",
    "ProjectionRunner",
    "Reconnected",
    "Retired",
    "Systemic",
    "consumer_name",
    "group_consumer_name",
]

log = logging.getLogger(__name__)


NATS_AWAY_LIMIT = 60.0
"""Seconds a catch-up (a rebuild) waits for NATS to come back before it gives up."""
FOLLOWERS_WAIT = 0.5
"""Seconds to wait for events after a batch each of whose events raised on its own."""
LEDGER_POLL = 0.02
"""Seconds between looks at how far the ledger's other writers have recorded: a runner
waits only with a backlog, where the usage group commits a batch every ~100-200 ms."""


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    batch_size: int = 2000
    linger: float = 0.002
    """Seconds to let a batch grow once its first event is in: throughput vs latency.
    Under load batches grow anyway while the previous one is in the database; at a steady
    5,000 events/s, 2 ms gave lag p50/p99 24/76 ms against 35/90 ms with 10 ms."""
    request_batch: int = 4000
    max_ack_pending: int = 20000
    time_bounds: TimeBounds = field(default_factory=TimeBounds)
    """Judged against each message's storage time, so a rebuild gives the live verdicts."""
    ledger_wait: float = 0.5
    ledger_lead: int = 100_000
    ledger_backlog: int = 500
    """A runner whose projections read the usage ledger's rows (the alert evaluator),
    taking a batch of at least ``ledger_backlog`` events (a backlog: throughput matters
    more than latency), waits for another writer of the ledger at most ``ledger_lead``
    stream sequences behind the batch to record it, as long as that writer moves at least every
    ``ledger_wait`` seconds; else it decodes and records the usage itself. So it does not
    decode what the usage group is about to, nor wait long for a writer far behind or
    stopped (seen idle, it is not waited for again until it moves). A smaller batch is
    taken whole, what the ledger lacks of it decoded at once: waiting for the usage
    group's commit at a steady 2,000 events/s tripled the alert latency (p50 30-36 ms
    to 89-101 ms), and taking a small batch only as far as the ledger held it left the
    evaluator, once behind the group, in many small batches (lag p99 200-235 ms against
    51-54, docs/performance.md)."""
    lone_fault_its_own: int | None = None
    """The stream sequence of an event whose fault, alone in its batch, is taken for its
    own (it is dead-lettered): ``services.worker`` sets it once the fault has stood long
    enough with nothing after the event to tell (``isolation.lone_fault_its_own``)."""


@dataclass(frozen=True)
class BatchResult:
    applied: int
    skipped: int
    dead_lettered: int
    last: Delivery[Prepared]
    applied_by: dict[str, int] = field(default_factory=dict)
    """Events each projection of the runner applied, by name: a group's members may differ
    (one past the others' checkpoint after its rebuild, or one refusing an event)."""


class Reconnected(Exception):
    """The NATS connection dropped: deliveries may have been lost in flight, so the
    consumer must restart from the checkpoint rather than continue past a gap."""


def group_consumer_name(projections: Sequence[Projection]) -> str:
    return "group-" + "-".join(sorted(p.name for p in projections))


class ProjectionRunner:
    """Runs ``projections`` (one, or a group) at their active versions, or one projection
    at ``version`` (a rebuild)."""

    def __init__(
        self,
        projections: Projection | Sequence[Projection],
        *,
        nc: Client,
        database_url: str,
        topology: Topology,
        version: int | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        self.projections = [projections] if isinstance(projections, Projection) else [*projections]
        if not self.projections or (version is not None and len(self.projections) > 1):
            raise ValueError("a runner runs one projection at a version, or a group at theirs")
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._database_url = database_url
        self._topology = topology
        self._requested_version = version
        self.config = config or EngineConfig()
        self.writers: list[VersionWriter] = []
        self.reader: PullReader[Prepared] | None = None
        self._conn: Connection | None = None
        self._reconnects = 0
        self._ledgers: list[SharedLedger] = []
        for p in self.projections:
            if p.ledger is not None and all(p.ledger is not seen for seen in self._ledgers):
                self._ledgers.append(p.ledger)
        # Usage decoded only when no other writer records it: every projection reads the
        # rows of the one ledger, none the decoded events.
        self._defers = len(self._ledgers) == 1 and all(
            p.ledger is self._ledgers[0] and p.ledger.reads_recorded for p in self.projections
        )
        self._idle: dict[str, int] = {}
        """Writers of the ledger seen idle, at the position they were idle at."""

    @property
    def projection(self) -> Projection:
        """The runner's one projection (a runner of a group has none)."""
        (only,) = self.projections
        return only

    @property
    def version(self) -> int:
        """The version the runner's one projection runs at."""
        (only,) = self.writers
        return only.version

    @property
    def durable(self) -> str:
        if len(self.projections) == 1:
            return consumer_name(self.projection, self.version)
        return group_consumer_name(self.projections)

    @property
    def connection(self) -> Connection:
        assert self._conn is not None, "open() first"
        return self._conn

    async def pending(self) -> int:
        """Events in the log this runner has not committed and acked yet."""
        info = await self._js.consumer_info(self._topology.event_stream.name, self.durable)
        return int(info.num_pending) + int(info.num_ack_pending)

    async def open(self) -> None:
        """Take each version's single-writer lock, then bind the consumer right after the
        lowest checkpoint."""
        conn = self._conn = await connect(self._database_url)
        # A projection is rebuildable and its checkpoint commits with it: a commit lost
        # in a database crash only rewinds the checkpoint, and the worker re-reads from
        # there. So there is no need to wait for the WAL flush. Every batch runs the same
        # few statements: plan them once.
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        if self._ledgers:
            await create_staging(conn)
        self.writers = [
            VersionWriter(p, self._requested_version or await ensure_projection(conn, p))
            for p in self.projections
        ]
        # one lock order, so two runners sharing projections cannot deadlock
        for writer in sorted(self.writers, key=lambda w: w.durable):
            await writer.take_over(conn)
        from_zero(DEAD_LETTERS, *((w.durable, kind) for w in self.writers for kind in REASON_KINDS))
        await self._read_after_checkpoint()

    async def _read_after_checkpoint(self) -> None:
        """Bind the consumer right after the lowest checkpoint and start reading; first
        ``Retired`` once a version was replaced (a hot standby may have waited for its
        lock through a swap, which dropped the version it was to run), and ``LogError``
        unless the log is the one the checkpoints were made on."""
        async with self.connection.transaction():
            await lock_checkpoints(self.connection, self.writers)
            marks = await log_marks(self.connection, self.writers)
        stream = self._topology.event_stream.name
        names = ", ".join(w.projection.name for w in self.writers)
        rebuild = f"`budget projections rebuild NAME` for each of: {names}"
        await verify_log(self._js, stream, self.durable, marks, rebuild=rebuild)
        after = min(mark.stream_seq for mark in marks)
        subjects = sorted({s for p in self.projections for s in p.filter_subjects(self._topology)})
        await bind_consumer(
            self._js,
            self._topology.event_stream.name,
            self.durable,
            filter_subjects=subjects,
            after_seq=after,
            max_ack_pending=self.config.max_ack_pending,
        )
        self._reconnects = self._nc.stats["reconnects"]
        self.reader = PullReader(
            self._nc,
            self._topology.event_stream.name,
            self.durable,
            prepare=Preparer(self._topology, self.config.time_bounds, defer_usage=self._defers),
            request_batch=self.config.request_batch,
        )
        await self.reader.start()
        log.info("%s reading after seq %d", self.durable, after)

    async def resume(self) -> None:
        """After a NATS reconnect, read again right after the lowest checkpoint:
        deliveries may have been lost in flight."""
        assert self.reader is not None
        await self.reader.stop()
        await self._read_after_checkpoint()

    async def close(self) -> None:
        if self.reader is not None:
            await self.reader.stop()
            self.reader = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def run(
        self,
        stop: asyncio.Event,
        on_batch: Callable[[BatchResult], None] | None = None,
        *,
        turn: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """Process batches until ``stop`` is set, each inside ``turn()`` (a health watch);
        raises Retired after a swap."""
        assert self.reader is not None
        while not stop.is_set():
            batch = await self.take(self.config.batch_size, self.config.linger, wait=0.5)
            if not batch:
                continue
            with turn():
                result = await self._process_or_grow(batch)
                await self.reader.ack_through(result.last)
            if on_batch is not None:
                on_batch(result)

    async def catch_up(self, on_batch: Callable[[BatchResult], None] | None = None) -> None:
        """Process batches, without lingering, until everything in the log is committed.
        A NATS reconnect resumes from the checkpoint (a long rebuild is not started over);
        NATS away for ``NATS_AWAY_LIMIT`` seconds raises ``TimeoutError``."""
        assert self.reader is not None
        away_since: float | None = None
        while True:
            try:
                batch = await self.take(self.config.batch_size, 0, wait=0.2)
                if batch:
                    result = await self._process_or_grow(batch)
                    await self.reader.ack_through(result.last)
                    if on_batch is not None:
                        on_batch(result)
                    continue
            except Reconnected as exc:
                log.warning("%s; resuming", exc)
                await self.resume()
                continue
            if self._nc.is_connected:
                away_since = None
                if self.reader.buffered == 0 and await self.pending() == 0:
                    return
                continue
            now = time.monotonic()
            if away_since is None:
                away_since = now
                log.warning("%s: NATS is away; waiting for it to come back", self.durable)
            elif now - away_since > NATS_AWAY_LIMIT:
                raise TimeoutError(f"{self.durable}: NATS away for {NATS_AWAY_LIMIT:.0f} s")

    async def take(
        self, count: int, linger: float, wait: float, *, await_writers: bool = True
    ) -> list[Delivery[Prepared]]:
        """The reader's next deliveries; ``Reconnected`` when NATS reconnected meanwhile
        (deliveries may have been lost in flight: never continue past a gap). Without
        ``await_writers``, usage the ledger lacks is decoded at once, never waited for
        (a rebuild's swap, which holds the registry row)."""
        assert self.reader is not None
        batch = await self.reader.take(count, linger, wait=wait)
        if self._nc.stats["reconnects"] != self._reconnects:
            raise Reconnected(f"{self.durable}: NATS reconnected; resuming from checkpoint")
        if self._defers and batch:
            return await self._recorded_part(batch, await_writers=await_writers)
        return batch

    async def _recorded_part(
        self, batch: list[Delivery[Prepared]], *, await_writers: bool
    ) -> list[Delivery[Prepared]]:
        """Of a backlog with deferred usage, the part the ledger has recorded (after
        waiting for another writer to record it: ``EngineConfig.ledger_wait``), the rest
        given back to the reader; of a smaller batch, or when the ledger holds none of it,
        the batch whole, its deferred usage decoded past what the ledger holds, for this
        runner to record."""
        assert self.reader is not None
        deferred = [d.stream_seq for d in batch if _is_deferred(d)]
        if not deferred:
            return batch
        (ledger,) = self._ledgers
        positions = await ledger.positions(self.connection)
        through = max(positions.values(), default=0)
        if len(batch) >= self.config.ledger_backlog and await_writers:
            if through < deferred[0]:
                through = await self._wait_for_writers(ledger, deferred[0], positions)
            if through >= deferred[0]:
                cut = next((i for i, d in enumerate(batch) if d.stream_seq > through), len(batch))
                self.reader.give_back(batch[cut:])
                return batch[:cut]
        if through >= deferred[-1]:
            return batch
        return [
            dataclasses.replace(d, prepared=d.prepared.resolve())
            if isinstance(d.prepared, Applied) and d.stream_seq > through
            else d
            for d in batch
        ]

    async def _wait_for_writers(
        self, ledger: SharedLedger, first: int, positions: Mapping[str, int]
    ) -> int:
        """How far the ledger is recorded once it holds ``first``, or once no writer that
        may record it soon (``_may_record``) has moved for ``ledger_wait`` seconds."""
        watched = self._may_record(first, positions)
        deadline = time.monotonic() + self.config.ledger_wait
        while watched:
            await asyncio.sleep(LEDGER_POLL)
            positions = await ledger.positions(self.connection)
            if max(positions.values()) >= first:
                break
            if any(positions.get(w, seq) > seq for w, seq in watched.items()):
                deadline = time.monotonic() + self.config.ledger_wait
            elif time.monotonic() >= deadline:
                self._idle.update(watched)
                break
            watched = self._may_record(first, positions)
        return max(positions.values(), default=0)

    def _may_record(self, first: int, positions: Mapping[str, int]) -> dict[str, int]:
        """The other writers that may record ``first`` soon: at most ``ledger_lead``
        behind it, and not seen idle where they are."""
        return {
            writer: seq
            for writer, seq in positions.items()
            if writer != self.durable
            and first - seq <= self.config.ledger_lead
            and self._idle.get(writer) != seq
        }

    async def _process_or_grow(self, batch: Sequence[Delivery[Prepared]]) -> BatchResult:
        """``process(batch)``; when each of its events raised on its own (``Systemic``), once
        more with the events that follow, if any arrive: a fault that later events do not
        hit is those events' own, and they go to the dead letters. So a few bad events at
        the head of what is pending cannot pass for a broken projection. Grows to twice
        the batch size at most; then, or when nothing follows, the fault stands."""
        assert self.reader is not None
        while True:
            try:
                return await self.process(batch)
            except Systemic:
                room = 2 * self.config.batch_size - len(batch)
                more = await self.take(room, 0, wait=FOLLOWERS_WAIT) if room > 0 else []
                if not more:
                    raise
                log.warning(
                    "%s: each event of a batch of %d failed; once more with what follows",
                    self.durable,
                    len(batch),
                )
                batch = [*batch, *more]

    async def process(self, batch: Sequence[Delivery[Prepared]]) -> BatchResult:
        """Apply one batch in one transaction (a savepoint when the caller holds one):
        the shared ledgers first, then each projection past its own checkpoint. The
        caller acks ``result.last`` once the outermost transaction has committed.

        The batch is applied whole first; if that fails on an event's account, the
        transaction is rolled back and the batch applied again, each part in a savepoint,
        so what fails is found and dead-lettered (``isolation``)."""
        try:
            return await self._process(batch, isolating=False)
        except Unapplied as exc:
            log.info("%s: a batch failed (%s); applying it again, isolating", self.durable, exc)
            with lone_fault_its_own(self.config.lone_fault_its_own):
                return await self._process(batch, isolating=True)

    async def _process(
        self, batch: Sequence[Delivery[Prepared]], *, isolating: bool
    ) -> BatchResult:
        conn = self.connection
        async with conn.transaction():
            positions = await lock_checkpoints(conn, self.writers)
            new = [d for d in batch if d.stream_seq > min(positions)]
            fresh = [d.prepared for d in new if isinstance(d.prepared, Applied)]
            bad = [(d, d.prepared) for d in new if isinstance(d.prepared, str)]
            if isolating:
                by_seq = {d.stream_seq: d for d in new}
                for ledger in self._ledgers:
                    refused = await self._record_isolating(conn, ledger, fresh)
                    bad += [(by_seq[a.stream_seq], reason) for a, reason in refused]
                    fresh = _without(fresh, refused)
                letters, moves = await self._apply(
                    conn, batch, positions, fresh, bad, isolating=True
                )
            else:
                # Staged first (a COPY cannot be pipelined), then recorded and applied in
                # one pipeline.
                with whole_batch():
                    records = [
                        await ledger.stage(conn, fresh, writer=self.durable)
                        for ledger in self._ledgers
                    ]
                async with pipelined(conn):
                    for record in records:
                        await record()
                    letters, moves = await self._apply(
                        conn, batch, positions, fresh, bad, isolating=False
                    )
            for writer, delivery, reason in letters:
                await dead_letter(
                    self._js,
                    self._topology,
                    writer,
                    delivery,
                    reason,
                    max_payload=self._nc.max_payload,
                )
        gone = {delivery.stream_seq for _, delivery, _ in letters}
        applied = len([a for a in fresh if a.stream_seq not in gone])
        skipped = len(batch) - applied - len(gone)
        by_name = {writer.projection.name: len(done) for writer, _, done in moves}
        return BatchResult(applied, skipped, len(gone), batch[-1], by_name)

    async def _apply(
        self,
        conn: Connection,
        batch: Sequence[Delivery[Prepared]],
        positions: Sequence[int],
        fresh: Sequence[Applied],
        bad: Sequence[tuple[Delivery[Prepared], str]],
        *,
        isolating: bool,
    ) -> tuple[list[tuple[str, Delivery[Prepared], str]], list[Move]]:
        """Apply ``fresh`` to each writer past its checkpoint and advance the checkpoints:
        the dead letters to send (by writer: ``bad`` and what each refused, isolating)
        and each writer's move. The letters are sent once the batch's statements have all
        succeeded: a batch that fails is applied again, isolating."""
        by_seq = {d.stream_seq: d for d in batch}
        letters = []
        moves: list[Move] = []
        for writer, position in zip(self.writers, positions, strict=True):
            mine = [a for a in fresh if a.stream_seq > position]
            refused = await writer.apply(conn, mine, isolating=isolating)
            theirs = [d_r for d_r in bad if d_r[0].stream_seq > position]
            for delivery, reason in theirs + [(by_seq[a.stream_seq], r) for a, r in refused]:
                letters.append((writer.durable, delivery, reason))
            moves.append((writer, max(batch[-1].stream_seq, position), _without(mine, refused)))
        last = batch[-1]
        await advance(conn, moves, LogMark(last.stream_seq, message_digest(last.data)))
        return letters, moves

    async def _record_isolating(
        self, conn: Connection, ledger: SharedLedger, events: Sequence[Applied]
    ) -> list[tuple[Applied, str]]:
        """Record ``events`` in ``ledger``, isolating: the events it refused, with why."""

        async def record(batch: Sequence[Applied]) -> None:
            await ledger.record(conn, batch, writer=self.durable)

        return await apply_events(conn, events, record, label=self.durable, isolating=True)


def _is_deferred(delivery: Delivery[Prepared]) -> bool:
    return isinstance(delivery.prepared, Applied) and delivery.prepared.is_deferred


def _without(events: Sequence[Applied], refused: Sequence[tuple[Applied, str]]) -> list[Applied]:
    gone = {a.stream_seq for a, _ in refused}
    return [a for a in events if a.stream_seq not in gone]
