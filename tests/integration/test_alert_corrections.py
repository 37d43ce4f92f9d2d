"""The alert evaluator counts repricing corrections toward thresholds, and raises the same
alerts for a sequence of usage and corrections however the log is split into batches, with
totals by the ledger rule and no bucket below zero (real PostgreSQL; the first test also
real NATS)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from events import (
    AlertType,
    BudgetPolicy,
    BudgetScope,
    Event,
    PolicySet,
    Topology,
    UsageRecorded,
    UsageRepriced,
    canonical,
)
from projections.alerts import AlertsProjection
from projections.base import Applied, physical
from projections.checkpoints import create_version, drop_version
from projections.db import connect

from support import catch_up, publish, rows, usage_event

AT = datetime(2026, 5, 4, 9, tzinfo=UTC)


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


def daily(limit: str, **scope: Any) -> PolicySet:
    policy = BudgetPolicy(name=f"cap {limit}", limit_amount=Decimal(limit), period="daily", **scope)
    return PolicySet(occurred_at=AT - timedelta(days=1), policy=policy)


async def test_a_correction_that_takes_spend_over_the_limit_raises_the_alert(
    nc: Client, db: str, topology: Topology
) -> None:
    unpriced = usage_event(at=AT, cost=None)
    fix = correction(unpriced, Decimal(2))
    await publish(nc, topology, [daily("1"), unpriced])
    await catch_up(AlertsProjection(), nc, db, topology)
    await publish(nc, topology, [fix])
    await catch_up(AlertsProjection(), nc, db, topology)

    found = await rows(
        db, "SELECT alert_type, alert ->> 'caused_by', alert ->> 'spend' FROM alerts ORDER BY 1"
    )
    assert found == [
        (t.value, str(fix.event_id), "2")
        for t in sorted(
            (AlertType.LIMIT_EXCEEDED, AlertType.THRESHOLD_CRITICAL, AlertType.THRESHOLD_WARNING),
            key=lambda t: t.value,
        )
    ]


# -- the same alerts for every batch split ----------------------------------------------------

USERS = ("alice", "bob")
costs = st.decimals(min_value=0, max_value=Decimal(4), places=2)
usage_step = st.tuples(
    st.just("usage"),
    st.sampled_from(USERS),
    st.none() | costs,
    st.integers(min_value=0, max_value=20 * 60),  # minutes after AT: two UTC days
)
correction_step = st.tuples(
    st.just("correct"), st.integers(min_value=0), st.none() | costs, st.just(0)
)
resend_step = st.tuples(st.just("resend"), st.integers(min_value=0), st.none(), st.just(0))
steps = st.lists(
    st.one_of(usage_step, usage_step, correction_step, resend_step), min_size=1, max_size=40
)


def build_log(generated: list[tuple[str, Any, Decimal | None, int]]) -> list[Event]:
    """Policies first, then the generated usage, corrections of earlier usage and late
    re-sends of earlier corrections (same event id)."""
    log: list[Event] = [
        daily("6"),
        daily("3", scope=BudgetScope.USER),
        daily("2.5", scope=BudgetScope.USER, scope_key="alice"),
    ]
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


def split(log: list[Applied], cuts: list[bool]) -> list[list[Applied]]:
    """Batches of ``log``: a new batch starts before event i where ``cuts[i]``."""
    batches: list[list[Applied]] = []
    for applied, cut in zip(log, itertools.chain(cuts, itertools.repeat(False)), strict=False):
        if cut or not batches:
            batches.append([])
        batches[-1].append(applied)
    return batches


_versions = itertools.count(100)


def ledger_totals(log: list[Event]) -> tuple[Decimal, int]:
    """(cost, unpriced calls) by the ledger rule: each usage event at the cost of the
    first-seen correction of it that came last in the log, re-sends ignored."""
    current: dict[Any, Decimal | None] = {}
    applied = set()
    for event in log:
        if isinstance(event, UsageRecorded):
            current.setdefault(event.event_id, event.cost)
        elif isinstance(event, UsageRepriced) and event.event_id not in applied:
            applied.add(event.event_id)
            current[event.corrects] = event.cost
    costs = list(current.values())
    return sum((c for c in costs if c is not None), Decimal(0)), costs.count(None)


async def alerts_raised(
    db: str, batches: list[list[Applied]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Apply the batches through a fresh version of the evaluator: the alerts it stored,
    and its global spend (cost, unpriced calls, buckets below zero)."""
    projection, version = AlertsProjection(), next(_versions)
    conn = await connect(db)
    try:
        await create_version(conn, projection, version)
        for batch in batches:
            async with conn.transaction():
                await projection.apply(conn, version, batch)
        found = await conn.execute(
            f"SELECT alert_id, stream_seq, raised_at, alert FROM {physical('alerts', version)}"
            " ORDER BY stream_seq, alert_id".encode()
        )
        alerts = list(await found.fetchall())
        found = await conn.execute(
            "SELECT coalesce(sum(cost) FILTER (WHERE scope = 'global'), 0),"
            " coalesce(sum(unpriced_requests) FILTER (WHERE scope = 'global'), 0),"
            " count(*) FILTER (WHERE cost < 0 OR unpriced_requests < 0)"
            f" FROM {physical('alert_spend_buckets', version)}".encode()
        )
        spend = list(await found.fetchall())
        await drop_version(conn, projection, version)
        return alerts, spend
    finally:
        await conn.close()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(generated=steps, cuts=st.lists(st.booleans(), max_size=45))
async def test_the_alerts_raised_do_not_depend_on_the_batch_split(
    db: str, generated: list[tuple[str, Any, Decimal | None, int]], cuts: list[bool]
) -> None:
    events = build_log(generated)
    log = [Applied(seq, e, canonical(e)) for seq, e in enumerate(events, 1)]
    whole = await alerts_raised(db, [log])
    assert await alerts_raised(db, split(log, cuts)) == whole
    assert await alerts_raised(db, [[a] for a in log]) == whole
    cost, unpriced = ledger_totals(events)
    assert whole[1] == [(cost, unpriced, 0)]
