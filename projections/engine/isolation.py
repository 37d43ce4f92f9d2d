"""One bad event cannot stop a consumer: a batch that fails is applied again without the
events that make it fail, which are returned with the reason they are dead-lettered."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar

import psycopg

from projections.engine.projection import Applied, Connection, Rejected

__all__ = [
    "Retired",
    "Systemic",
    "Unapplied",
    "apply_events",
    "apply_isolating_rejects",
    "lone_fault_its_own",
    "pipelined",
    "whole_batch",
]

log = logging.getLogger(__name__)

Apply = Callable[[Sequence[Applied]], Awaitable[None]]


class Retired(Exception):
    """A newer version of the projection went live; this runner must stop writing."""


class Systemic(Exception):
    """Every event of a batch raised on its own, and not about its data: a fault of the
    projection (a code bug, stored data that no longer validates) rather than of the
    events, unless events after them apply (``ProjectionRunner`` tries that). ``lone``:
    the stream sequence of the event when it was the only one applied (alone in its
    batch, or the only one left of it)."""

    def __init__(self, message: str, *, lone: int | None = None) -> None:
        super().__init__(message)
        self.lone = lone


_LONE_FAULT_ITS_OWN: ContextVar[int | None] = ContextVar("lone_fault_its_own", default=None)


@contextlib.contextmanager
def lone_fault_its_own(seq: int | None) -> Iterator[None]:
    """Inside: a fault the event at ``seq`` raises alone in its batch is taken for its
    own, and it is dead-lettered (``services.worker`` decides so once it has stood long
    with no event after it to tell)."""
    token = _LONE_FAULT_ITS_OWN.set(seq)
    try:
        yield
    finally:
        _LONE_FAULT_ITS_OWN.reset(token)


class Unapplied(Exception):
    """A batch applied whole failed on something one of its events may be to blame for:
    the transaction is lost, and the batch is to be applied again, isolating."""


async def apply_events(
    conn: Connection, events: Sequence[Applied], apply: Apply, *, label: str, isolating: bool
) -> list[tuple[Applied, str]]:
    """Apply ``events``: whole, with no savepoint (the common case: a savepoint costs two
    round trips), raising ``Unapplied`` when that fails on an event's account
    (``whole_batch``); or, ``isolating``, as ``apply_isolating_rejects`` does. The events
    refused, with reasons."""
    if not events:
        return []
    if isolating:
        return await apply_isolating_rejects(conn, events, apply, label=label)
    with whole_batch():
        await apply(events)
    return []


@contextlib.contextmanager
def whole_batch() -> Iterator[None]:
    """Inside, a batch is applied whole: a failure one of its events may be to blame for
    (the database refusing its data, the projection rejecting or raising on it) raises
    ``Unapplied``; other database errors (a lost connection) and a retired version are no
    event's fault and propagate."""
    try:
        yield
    except Unapplied:
        raise
    except Exception as exc:
        if isinstance(exc, psycopg.Error | Retired) and not _refuses_data(exc):
            raise
        raise Unapplied(str(exc)) from exc


@contextlib.asynccontextmanager
async def pipelined(conn: Connection) -> AsyncIterator[None]:
    """Statements of a batch applied whole (``whole_batch``), sent without waiting for
    each one's result: one round trip for those that read nothing back, where each used to
    cost one (most of a small batch's time, docs/performance.md). A statement's failure
    surfaces where a later result is read, at the latest on leaving the block."""
    with whole_batch():
        async with conn.pipeline():
            yield


async def apply_isolating_rejects(
    conn: Connection, events: Sequence[Applied], apply: Apply, *, label: str
) -> list[tuple[Applied, str]]:
    """Apply the batch; if an event makes it fail (the database refuses its data, e.g.
    a NUL character in a name, the projection rejects it (``Rejected``, e.g. a
    correction of an unknown event) or raises on it, e.g. a period past the year 9999),
    apply event by event (once more without them, when ``Rejected`` names them all)
    and return the ones that fail, so one bad event cannot stop the consumer. Other
    database errors (a lost connection) and a retired version are no event's fault:
    they propagate. A fault every event of a batch raises on its own (a code bug, stored
    data that no longer validates) raises ``Systemic``: dead-lettering each would lose
    them all while the worker looked healthy; raised, the worker retries with backoff and
    applies them once the fault is gone."""
    failure = await _try_apply(conn, events, apply)
    if failure is None:
        return []
    if isinstance(failure, Rejected) and failure.rejects:
        # the projection named every event it refuses: the rest in one more try
        refused = [
            (e, failure.rejects[e.stream_seq]) for e in events if e.stream_seq in failure.rejects
        ]
        rest = [e for e in events if e.stream_seq not in failure.rejects]
        if refused:
            return refused + (
                await apply_isolating_rejects(conn, rest, apply, label=label) if rest else []
            )
    if len(events) == 1:
        failures = [(events[0], failure)]
    else:
        failures = await _apply_one_by_one(conn, events, apply)
    faults = [f for _, f in failures if not _about_its_data(f)]
    # One fault of a batch of one is as much the projection's as many of a larger batch:
    # at low traffic every batch holds one event, and each would be dead-lettered.
    lone = events[0].stream_seq if len(events) == 1 else None
    its_own = lone is not None and lone == _LONE_FAULT_ITS_OWN.get()
    if len(failures) == len(events) and len(faults) >= min(len(events), 2) and not its_own:
        raise Systemic(
            f"{label}: each of a batch of {len(events)} event(s) raised on its own, so the fault"
            f" is taken for the projection's, not theirs; nothing is dead-lettered:"
            f" {type(faults[0]).__name__}: {faults[0]}",
            lone=lone,
        ) from faults[0]
    return [(event, _rejection(failure)) for event, failure in failures]


async def _apply_one_by_one(
    conn: Connection, events: Sequence[Applied], apply: Apply
) -> list[tuple[Applied, Exception]]:
    """Apply each event alone; those that fail, with why. When some applied, each that
    raised is tried once more: a fault of the projection that cleared meanwhile (the
    stored data mended) would otherwise pass for the event's own and dead-letter it."""
    failures: list[tuple[Applied, Exception]] = []
    for event in events:
        failure = await _try_apply(conn, [event], apply)
        if failure is not None:
            failures.append((event, failure))
    if len(failures) == len(events):
        return failures
    confirmed = []
    for event, failure in failures:
        again = failure if _about_its_data(failure) else await _try_apply(conn, [event], apply)
        if again is not None:
            confirmed.append((event, again))
        else:
            log.warning("event %s applied on a second try: the fault cleared", event.stream_seq)
    return confirmed


async def _try_apply(conn: Connection, events: Sequence[Applied], apply: Apply) -> Exception | None:
    """Apply ``events`` in a savepoint; the exception that rolled it back, if any (a
    database error other than refused data, and ``Retired``, propagate)."""
    try:
        async with conn.transaction():
            await apply(events)
        return None
    except Exception as exc:
        if isinstance(exc, psycopg.Error | Retired) and not _refuses_data(exc):
            raise
        return exc


def _refuses_data(exc: Exception) -> bool:
    """The database refused the data: invalid (SQLSTATE class 22), against a constraint
    (23), or past one of its limits (54: e.g. a value too long for an index row)."""
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError) or (
        isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith("54")
    )


def _about_its_data(exc: Exception) -> bool:
    """Whether ``exc`` says what is wrong with the event's data (the projection rejected
    it, or the database refused it), rather than that the projection failed on it."""
    return isinstance(exc, Rejected) or _refuses_data(exc)


def _rejection(exc: Exception) -> str:
    if isinstance(exc, Rejected):
        return str(exc)
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return f"rejected by the database: {exc}"
    log.error("projection failed on one event; dead-lettering it", exc_info=exc)
    return f"the projection failed on it: {type(exc).__name__}: {exc}"
