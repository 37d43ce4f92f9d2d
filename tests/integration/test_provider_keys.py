"""A provider is one key however a producer spells it, on real NATS and PostgreSQL: a
provider policy counts and refuses events published raw as "OpenAI" under "openai" (the
id prices and policies use), the projections count them there, filters find every
spelling, and a rebuild from the log gives the same rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from nats.aio.client import Client

from events import Topology, UsageRepriced
from events.queries import ReportQuery
from events.rpc import CallAttributes
from projections.db import connect
from projections.engine.rebuild import rebuild
from projections.history_pages import HistoryFilter, history_page
from projections.migrate import migrate
from projections.registry import get_projection
from projections.report_queries import ReportBuilder

from enforcement import EnforcementStack
from support import catch_up, publish, rows, usage_event, wait_for

pytestmark = pytest.mark.integration
DIME = Decimal("0.10")
AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
# The spellings of one provider, as three producers sent them.
SPELLINGS = ("OpenAI", "openai", " OPENAI ")


async def test_a_provider_policy_refuses_the_provider_however_events_spell_it(
    stack: EnforcementStack, nc: Client, topology: Topology
) -> None:
    """A BLOCK policy on "openai" counts calls published raw (as a producer in another
    language does) as "OpenAI" and "openai", and refuses a check that names the provider
    "OpenAI" (sent to the enforcer as it was spelt) once they spent its limit; a hold
    counts under "openai" too."""
    policy = await stack.set_policy(
        scope="provider", scope_key="openai", limit_amount="0.06", action="block"
    )
    raw = [
        usage_event(cost="0.03", provider="OpenAI", user="u1"),
        usage_event(cost="0.02", provider="openai", user="u1"),
    ]
    await publish(nc, topology, raw)
    spelt = CallAttributes(model="gpt-4o", provider="OpenAI", user_id="u2")

    async def refused() -> bool:
        """a check naming "OpenAI" counts both calls and is refused"""
        check = await stack.tracker.checker.check(spelt, estimated_cost=DIME, reserve=False)
        return check.current_spend == Decimal("0.05") and not check.allowed

    await wait_for(refused, within=15)
    check = await stack.tracker.checker.check(spelt, estimated_cost=Decimal("0.01"))
    assert check.allowed and [p.policy_id for p in check.policies] == [policy.policy_id]
    held = await rows(stack.settings.database_url, "SELECT window_key FROM reservation_holds")
    assert held == [("openai",)], "a hold counts under the provider's key"
    tracked = await stack.tracker.check_budget(
        "gpt-4o", provider="OPENAI", user_id="u3", estimated_cost=DIME, reserve=False
    )
    assert not tracked.allowed and tracked.current_spend == Decimal("0.06")


def spelt_events() -> tuple[list[object], Decimal]:
    """Calls of one provider in each spelling (and of another provider, spelt twice), one
    of them repriced (its correction repeats the spelling), and what the provider costs
    after it."""
    calls = [
        usage_event(cost=cost, at=AT + timedelta(minutes=i), provider=name, user=f"user-{i}")
        for i, (cost, name) in enumerate(zip(("0.10", "0.20", "0.30"), SPELLINGS, strict=True))
    ]
    others = [
        usage_event(cost="0.05", at=AT, provider=name, model="gemini-2.5-pro")
        for name in ("Google", "gemini")
    ]
    fix = UsageRepriced(
        occurred_at=AT + timedelta(hours=1),
        corrects=calls[2].event_id,
        provider=" OPENAI ",
        model="gpt-4o",
        user_id=calls[2].user_id,
        project_id=calls[2].project_id,
        cost=Decimal("0.35"),
        reason="test",
    )
    return [*calls, *others, fix], Decimal("0.65")


async def provider_rows(db: str) -> dict[str, list[tuple[object, ...]]]:
    """What each counting projection holds by provider."""
    return {
        "spend": await rows(
            db,
            "SELECT scope_key, bucket_start, cost, requests FROM spend_buckets"
            " WHERE scope = 'provider' ORDER BY 1, 2",
        ),
        "reports": await rows(
            db,
            "SELECT dimension, key1, key2, period_start, cost, requests FROM report_daily"
            " WHERE dimension IN ('provider', 'model') ORDER BY 1, 2, 3, 4",
        ),
        "alerts": await rows(
            db,
            "SELECT scope_key, bucket_start, cost, requests FROM alert_spend_buckets"
            " WHERE scope = 'provider' ORDER BY 1, 2",
        ),
        "history": await rows(db, "SELECT provider, cost FROM usage_history ORDER BY stream_seq"),
    }


async def test_projections_count_every_spelling_under_the_provider_s_key(
    nc: Client, db: str, topology: Topology
) -> None:
    """Events published raw in several spellings (and a correction) count as one provider
    in spend, report rollups and the alert evaluator, under the id pricing and provider
    policies use ("Google" and "gemini" are "google"); history keeps each spelling, and its
    filters (pages and the history report) find all of them; rebuilt, every projection
    holds the same rows."""
    events, openai = spelt_events()
    await publish(nc, topology, events)  # type: ignore[arg-type]
    usage = [get_projection(name) for name in ("spend", "history", "reports")]
    await catch_up(usage, nc, db, topology)
    await catch_up(get_projection("alerts"), nc, db, topology)

    counted = await provider_rows(db)
    quarter = AT.replace(minute=30)
    google = Decimal("0.10")
    assert counted["spend"] == [("google", quarter, google, 2), ("openai", quarter, openai, 3)]
    day = AT.replace(hour=0, minute=0)
    assert counted["reports"] == [
        ("model", "google", "gemini-2.5-pro", day, google, 2),
        ("model", "openai", "gpt-4o", day, openai, 3),
        ("provider", "google", "", day, google, 2),
        ("provider", "openai", "", day, openai, 3),
    ]
    assert counted["alerts"] == counted["spend"]
    assert [name for name, _ in counted["history"]] == [*SPELLINGS, "Google", "gemini"]
    assert await rows(db, "SELECT DISTINCT provider FROM usage_ledger ORDER BY 1") == [
        ("google",),
        ("openai",),
    ]

    conn = await connect(db)
    try:
        page, _ = await history_page(conn, HistoryFilter(provider="OpenAI"), limit=10)
        assert sorted(r["provider"] for r in page) == sorted(SPELLINGS)
        report = await ReportBuilder(conn).answer(
            ReportQuery(kind="history", start=AT, end=AT + timedelta(hours=1), provider="Gemini")
        )
        # both at AT: calls of one time are listed by event id, as history pages list them
        tied = sorted(
            (e for e in events if getattr(e, "provider", None) in ("Google", "gemini")),
            key=lambda e: str(e.event_id),
        )
        assert [r["provider"] for r in report.main.records()] == [e.provider for e in tied]
        spend = await ReportBuilder(conn).answer(
            ReportQuery(kind="custom", start=AT, end=AT + timedelta(hours=1), group_by=["provider"])
        )
        assert [(r["provider"], r["cost_usd"]) for r in spend.main.records()] == [
            ("openai", openai),
            ("google", google),
        ]
    finally:
        await conn.close()

    for name in ("spend", "history", "reports", "alerts"):
        await rebuild(get_projection(name), nc=nc, database_url=db, topology=topology)
    assert await provider_rows(db) == counted


async def test_the_upgrade_keys_the_ledger_s_providers(pg_schema_url: str) -> None:
    """Usage an earlier release recorded in the ledger with the producer's spelling gets
    the provider's key, so its corrections and the rebuilt projections count it there."""
    migrate(pg_schema_url, revision="0013")
    async with await connect(pg_schema_url) as conn:
        for seq, provider in enumerate((*SPELLINGS, "Gemini", "acme"), start=1):
            await conn.execute(
                "INSERT INTO usage_ledger (event_id, stream_seq, occurred_at, provider, model,"
                " kind) VALUES (gen_random_uuid(), %s, now(), %s, 'gpt-4o', 'chat')",
                (seq, provider),
            )
    migrate(pg_schema_url)
    assert await rows(pg_schema_url, "SELECT provider FROM usage_ledger ORDER BY stream_seq") == [
        ("openai",),
        ("openai",),
        ("openai",),
        ("google",),
        ("acme",),
    ]
