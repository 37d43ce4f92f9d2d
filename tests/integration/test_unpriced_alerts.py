"""Usage recorded without a price counts toward no limit, threshold or anomaly, so the
evaluator says so: an ``unpriced_usage`` alert once a UTC day per model, raised by the
first such call in the log (or correction leaving a call without a price), queued for the
rule's channels, the same however the log is batched (real NATS and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

from nats.aio.client import Client

from events import AlertType, Topology
from projections.alerts import AlertsProjection

from ledger_logs import AT, applied, correction, daily, run_fresh_version
from support import catch_up, publish, rows, usage_event

UNPRICED = AlertType.UNPRICED_USAGE.value


async def test_unpriced_usage_raises_one_alert_a_day_per_model_and_queues_it(
    nc: Client, db: str, topology: Topology
) -> None:
    first = usage_event(at=AT, cost=None, model="mystery-1")
    again = usage_event(at=AT + timedelta(minutes=5), cost=None, model="mystery-1")
    other = usage_event(at=AT + timedelta(minutes=6), cost=None, model="mystery-2")
    await publish(nc, topology, [daily("0.01"), first, usage_event(at=AT), again, other])
    await catch_up(AlertsProjection(), nc, db, topology)
    next_day = usage_event(at=AT + timedelta(days=1), cost=None, model="mystery-1")
    await publish(nc, topology, [usage_event(at=AT, cost=None, model="mystery-1"), next_day])
    await catch_up(AlertsProjection(), nc, db, topology)

    found = await rows(
        db,
        "SELECT alert ->> 'scope_key', alert ->> 'caused_by', alert ->> 'message' FROM alerts"
        " WHERE alert_type = %s ORDER BY stream_seq",
        (UNPRICED,),
    )
    assert [(key, cause) for key, cause, _ in found] == [
        ("mystery-1", str(first.event_id)),
        ("mystery-2", str(other.event_id)),
        ("mystery-1", str(next_day.event_id)),
    ]
    assert "mystery-1 used without a price on 2026-05-04 UTC" in found[0][2]
    assert "count toward no limit" in found[0][2] and "budget reprice" in found[0][2]
    queued = await rows(
        db,
        "SELECT count(DISTINCT o.alert_id), count(*) FROM alert_outbox o"
        " JOIN alerts a USING (alert_id) WHERE a.alert_type = %s",
        (UNPRICED,),
    )
    assert queued == [(3, 3 * 5)]  # the default rule: every channel


async def test_the_unpriced_alerts_do_not_depend_on_the_batch_split(db: str) -> None:
    events = [
        usage_event(at=AT + timedelta(minutes=m), cost=None if m % 2 else "0.01", model=model)
        for m in range(8)
        for model in ("mystery-1", "mystery-2")
    ]
    repriced = usage_event(at=AT + timedelta(days=1), cost="0.02", model="mystery-3")
    events += [repriced, correction(repriced, None), correction(repriced, None)]
    log = applied(events)
    query = [
        "SELECT alert_id, stream_seq, raised_at, alert FROM {alerts} WHERE alert_type = '"
        + UNPRICED
        + "' ORDER BY stream_seq, alert_id"
    ]
    whole = await run_fresh_version(db, AlertsProjection(), [log], query)
    assert [(alert["scope_key"], alert["caused_by"]) for *_, alert in whole[0]] == [
        ("mystery-1", str(events[2].event_id)),
        ("mystery-2", str(events[3].event_id)),
        ("mystery-3", str(events[-2].event_id)),  # the correction that left it unpriced
    ]
    assert whole[0][-1][2] == repriced.occurred_at  # raised at the corrected call's time
    assert await run_fresh_version(db, AlertsProjection(), [[a] for a in log], query) == whole
    assert await run_fresh_version(db, AlertsProjection(), [log[:5], log[5:]], query) == whole
