"""Logs of usage, repricing corrections and late re-sends, for the property tests that
apply them in random batch splits, and what the ledger rule says their totals are."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from hypothesis import strategies as st

from events import (
    BudgetPolicy,
    BudgetScope,
    Event,
    PolicySet,
    UsageRecorded,
    UsageRepriced,
)
from projections.db import connect
from projections.engine.checkpoints import create_version, drop_version
from projections.engine.projection import Applied, Projection, physical
from projections.ledger import SHARED_LEDGER

from support import apply_batch, usage_event

__all__ = [
    "AT",
    "Step",
    "applied",
    "build_log",
    "correction",
    "daily",
    "ledger_totals",
    "run_fresh_version",
    "split",
    "steps",
    "steps_costing",
]

AT = datetime(2026, 5, 4, 9, tzinfo=UTC)
Step = tuple[str, Any, Decimal | None, int]


def correction(event: UsageRecorded, cost: Decimal | None) -> UsageRepriced:
    return UsageRepriced(
        occurred_at=event.occurred_at,
        corrects=event.event_id,
        provider=event.provider,
        model=event.model,
        user_id=event.user_id,
        project_id=event.project_id,
        cost=cost,
        unpriced_reason="no price" if cost is None else None,
        reason="test",
    )


def daily(limit: str, **fields: Any) -> PolicySet:
    """A daily policy (global unless ``fields`` give its scope) of ``limit`` USD."""
    policy = BudgetPolicy(
        name=f"cap {limit}", limit_amount=Decimal(limit), period="daily", **fields
    )
    return PolicySet(occurred_at=AT - timedelta(days=1), policy=policy)


USERS = ("alice", "bob")


def steps_costing(
    costs: st.SearchStrategy[Decimal], minutes: int = 20 * 60
) -> st.SearchStrategy[list[Step]]:
    """Logs of usage, corrections and re-sends whose costs (when priced) come from ``costs``,
    the usage up to ``minutes`` after AT (by default two UTC days)."""
    usage_step = st.tuples(
        st.just("usage"),
        st.sampled_from(USERS),
        st.none() | costs,
        st.integers(min_value=0, max_value=minutes),
    )
    correction_step = st.tuples(
        st.just("correct"), st.integers(min_value=0), st.none() | costs, st.just(0)
    )
    resend_step = st.tuples(st.just("resend"), st.integers(min_value=0), st.none(), st.just(0))
    return st.lists(
        st.one_of(usage_step, usage_step, correction_step, resend_step), min_size=1, max_size=40
    )


steps = steps_costing(st.decimals(min_value=0, max_value=Decimal(4), places=2))


def build_log(generated: list[Step], policies: Sequence[PolicySet] | None = None) -> list[Event]:
    """``policies`` first (absent: a global daily cap, one per user and alice's own), then
    the generated usage, corrections of earlier usage and late re-sends of earlier
    corrections (same event id)."""
    log: list[Event] = (
        list(policies)
        if policies is not None
        else [
            daily("6"),
            daily("3", scope=BudgetScope.USER),
            daily("2.5", scope=BudgetScope.USER, scope_key="alice"),
        ]
    )
    usage: list[UsageRecorded] = []
    fixes: list[UsageRepriced] = []
    for kind, who, cost, minutes in generated:
        if kind == "usage":
            at = AT + timedelta(minutes=minutes)
            event = usage_event(at=at, cost=None if cost is None else str(cost), user=who)
            usage.append(event)
            log.append(event)
        elif kind == "correct" and usage:
            fixes.append(correction(usage[who % len(usage)], cost))
            log.append(fixes[-1])
        elif kind == "resend" and fixes:
            log.append(fixes[who % len(fixes)])
    return log


def applied(events: list[Event]) -> list[Applied]:
    """The events as the engine hands them to a projection, at sequences 1, 2, ..."""
    return [Applied.of(seq, event) for seq, event in enumerate(events, 1)]


def split(log: list[Applied], cuts: list[bool]) -> list[list[Applied]]:
    """Batches of ``log``: a new batch starts before event i where ``cuts[i]``."""
    batches: list[list[Applied]] = []
    for applied, cut in zip(log, itertools.chain(cuts, itertools.repeat(False)), strict=False):
        if cut or not batches:
            batches.append([])
        batches[-1].append(applied)
    return batches


def ledger_totals(log: list[Event]) -> tuple[Decimal, int]:
    """(cost, unpriced calls) by the ledger rule: each usage event at the cost of the
    first-seen correction of it that came last in the log, re-sends ignored."""
    current: dict[Any, Decimal | None] = {}
    seen = set()
    for event in log:
        if isinstance(event, UsageRecorded):
            current.setdefault(event.event_id, event.cost)
        elif isinstance(event, UsageRepriced) and event.event_id not in seen:
            seen.add(event.event_id)
            current[event.corrects] = event.cost
    costs = list(current.values())
    with localcontext(prec=200):  # exact for any log ``steps_costing`` builds
        return sum((c for c in costs if c is not None), Decimal(0)), costs.count(None)


_versions = itertools.count(100)
"""Version numbers for ``run_fresh_version``: far from the live version 1 and its rebuilds."""


async def run_fresh_version(
    db: str, projection: Projection, batches: list[list[Applied]], queries: Sequence[str]
) -> list[list[tuple[Any, ...]]]:
    """Apply the batches, one transaction each, to a new version of ``projection`` and
    return each query's rows (``{table}`` in a query names that table of the version);
    the version is dropped afterwards."""
    version = next(_versions)
    tables = {table: physical(table, version) for table in projection.tables}
    conn = await connect(db)
    try:
        await create_version(conn, projection, version)
        if projection.ledger is not None:
            # a log of its own: the shared ledger must not know sequences of another one
            await conn.execute(f"TRUNCATE {', '.join(SHARED_LEDGER.tables)}".encode())
        for batch in batches:
            async with conn.transaction():
                await apply_batch(conn, projection, version, batch)
        results = []
        for query in queries:
            cursor = await conn.execute(query.format(**tables).encode())
            results.append(list(await cursor.fetchall()))
        await drop_version(conn, projection, version)
        return results
    finally:
        await conn.close()
