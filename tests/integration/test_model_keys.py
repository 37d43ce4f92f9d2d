"""A model is one key however it is cased, on real NATS and PostgreSQL: a model policy
counts and refuses "GPT-4o" as "gpt-4o" (pricing already found it so), the projections
count events any producer published under the model's key, filters find every spelling,
and a rebuild from the log gives the same rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from nats.aio.client import Client

from events import (
    BudgetPolicy,
    BudgetScope,
    LimitAction,
    PolicySet,
    Topology,
    UsageRepriced,
    utc_now,
)
from events.queries import ReportQuery
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
# The spellings of one model, as three producers sent them.
SPELLINGS = ("GPT-4o", "gpt-4o", "GPT-4O")
# Google's resource names of one model (google-genai's, Vertex AI's) and its bare name.
GOOGLE_SPELLINGS = (
    "models/gemini-2.0-flash",
    "gemini-2.0-flash",
    "publishers/google/models/Gemini-2.0-Flash",
)
# (provider, the model's key, its spellings)
SPELT_MODELS = [("openai", "gpt-4o", SPELLINGS), ("google", "gemini-2.0-flash", GOOGLE_SPELLINGS)]


async def test_a_model_policy_refuses_the_model_however_calls_case_it(
    stack: EnforcementStack, nc: Client, topology: Topology
) -> None:
    """A BLOCK policy on "gpt-4o" counts calls recorded as "GPT-4O" (by the tracker) and as
    "GPT-4o" and "gpt-4o" (published raw, as a producer in another language does), and
    refuses a check for "GPT-4o" once they spent its limit."""
    policy = await stack.set_policy(
        scope="model", scope_key="gpt-4o", limit_amount="0.05", action="block"
    )
    recorded = await stack.tracker.record_usage(
        model="GPT-4O", provider="openai", input_tokens=1000, user_id="u1"
    )
    assert recorded.model == "GPT-4O", "the event keeps the caller's spelling"
    assert recorded.cost is not None
    await stack.tracker.flush()
    raw = [usage_event(cost="0.02", model="GPT-4o"), usage_event(cost="0.01", model="gpt-4o")]
    await publish(nc, topology, raw)
    spent = recorded.cost + Decimal("0.03")

    async def refused() -> bool:
        """a check for "GPT-4o" counts all three calls and is refused"""
        check = await stack.tracker.check_budget(
            "GPT-4o", user_id="u2", estimated_cost=DIME, reserve=False
        )
        return check.current_spend == spent and not check.allowed

    await wait_for(refused, within=15)
    check = await stack.tracker.check_budget("gpt-4o", user_id="u3", estimated_cost=Decimal("0.01"))
    assert check.allowed and [p.policy_id for p in check.policies] == [policy.policy_id]
    held = await rows(stack.settings.database_url, "SELECT window_key FROM reservation_holds")
    assert held == [("gpt-4o",)], "a hold counts under the model's key"


async def test_a_model_policy_set_or_stored_in_another_case_applies(
    stack: EnforcementStack,
) -> None:
    """A policy set as "GPT-4o" is keyed "gpt-4o"; one an earlier release stored as
    "GPT-4O" (published here as it was) is read as "gpt-4o" and judges such calls."""
    policy = await stack.set_policy(
        scope="model", scope_key="GPT-4o", limit_amount="1.00", action="warn"
    )
    assert policy.scope_key == "gpt-4o"
    legacy = BudgetPolicy(
        policy_id="legacy",
        name="legacy",
        scope=BudgetScope.MODEL,
        scope_key="GPT-4O",
        limit_amount=Decimal("0.05"),
        action=LimitAction.BLOCK,
    )
    await stack.tracker.publisher.publish(PolicySet(occurred_at=utc_now(), policy=legacy))
    await stack.tracker.flush()

    async def applies() -> bool:
        """the enforcer judges a "Gpt-4O" call by both"""
        check = await stack.tracker.check_budget(
            "Gpt-4O", user_id="u1", estimated_cost=DIME, reserve=False
        )
        return {p.policy_id for p in check.policies} == {"legacy", policy.policy_id} and (
            not check.allowed
        )

    await wait_for(applies, within=10)


def spelt_events(provider: str, spellings: tuple[str, ...]) -> tuple[list[object], Decimal]:
    """Calls of one model of ``provider`` in each spelling (and another model), one of them
    repriced (its correction repeats the spelling), and what the model costs after it."""
    calls = [
        usage_event(
            cost=cost, at=AT + timedelta(minutes=i), model=model, provider=provider, user=f"u{i}"
        )
        for i, (cost, model) in enumerate(zip(("0.10", "0.20", "0.30"), spellings, strict=True))
    ]
    other = usage_event(cost="0.05", at=AT, model="o3")
    fix = UsageRepriced(
        occurred_at=AT + timedelta(hours=1),
        corrects=calls[2].event_id,
        provider=provider,
        model=spellings[2],
        user_id=calls[2].user_id,
        project_id=calls[2].project_id,
        cost=Decimal("0.35"),
        reason="test",
    )
    return [*calls, other, fix], Decimal("0.65")


async def model_rows(db: str) -> dict[str, list[tuple[object, ...]]]:
    """What each counting projection holds by model."""
    return {
        "spend": await rows(
            db,
            "SELECT scope_key, bucket_start, cost, requests FROM spend_buckets"
            " WHERE scope = 'model' ORDER BY 1, 2",
        ),
        "reports": await rows(
            db,
            "SELECT key1, key2, period_start, cost, requests FROM report_daily"
            " WHERE dimension = 'model' ORDER BY 1, 2, 3",
        ),
        "alerts": await rows(
            db,
            "SELECT scope_key, bucket_start, cost, requests FROM alert_spend_buckets"
            " WHERE scope = 'model' ORDER BY 1, 2",
        ),
        "history": await rows(db, "SELECT model, cost FROM usage_history ORDER BY stream_seq"),
    }


@pytest.mark.parametrize(("provider", "key", "spellings"), SPELT_MODELS)
async def test_projections_count_every_spelling_under_the_model_s_key(
    nc: Client, db: str, topology: Topology, provider: str, key: str, spellings: tuple[str, ...]
) -> None:
    """Events published raw in three spellings (cases; Google's resource names and the
    bare name) and a correction count as one model in spend, report rollups and the alert
    evaluator; history keeps each spelling, and its filters (pages and the history report)
    find all of them; rebuilt, every projection holds the same rows."""
    events, spent = spelt_events(provider, spellings)
    await publish(nc, topology, events)  # type: ignore[arg-type]
    usage = [get_projection(name) for name in ("spend", "history", "reports")]
    await catch_up(usage, nc, db, topology)
    await catch_up(get_projection("alerts"), nc, db, topology)

    counted = await model_rows(db)
    quarter = AT.replace(minute=30)
    assert counted["spend"] == [
        (key, quarter, spent, 3),
        ("o3", quarter, Decimal("0.05"), 1),
    ]
    day = AT.replace(hour=0, minute=0)
    assert counted["reports"] == [
        *sorted([(provider, key, day, spent, 3), ("openai", "o3", day, Decimal("0.05"), 1)]),
    ]
    assert counted["alerts"] == counted["spend"]
    assert [model for model, _ in counted["history"]] == [*spellings, "o3"]
    assert await rows(db, "SELECT DISTINCT model FROM usage_ledger ORDER BY 1") == [
        (key,),
        ("o3",),
    ]

    conn = await connect(db)
    try:
        page, _ = await history_page(conn, HistoryFilter(model=spellings[2]), limit=10)
        assert sorted(r["model"] for r in page) == sorted(spellings)
        report = await ReportBuilder(conn).answer(
            ReportQuery(kind="history", start=AT, end=AT + timedelta(hours=1), model=spellings[0])
        )
        assert [r["model"] for r in report.main.records()] == list(spellings)
        assert sum(r["cost_usd"] for r in report.main.records()) == spent
        spend = await ReportBuilder(conn).answer(
            ReportQuery(kind="custom", start=AT, end=AT + timedelta(hours=1), group_by=["model"])
        )
        assert [(r["model"], r["cost_usd"]) for r in spend.main.records()] == [
            (key, spent),
            ("o3", Decimal("0.05")),
        ]
    finally:
        await conn.close()

    for name in ("spend", "history", "reports", "alerts"):
        await rebuild(get_projection(name), nc=nc, database_url=db, topology=topology)
    assert await model_rows(db) == counted


async def test_the_upgrade_keys_the_ledger_s_models(pg_schema_url: str) -> None:
    """Usage an earlier release recorded in the ledger with the caller's spelling gets the
    model's key, so its corrections and the rebuilt projections count it there."""
    migrate(pg_schema_url, revision="0012")
    async with await connect(pg_schema_url) as conn:
        for seq, model in enumerate((*SPELLINGS, "o3", " Straße "), start=1):
            await conn.execute(
                "INSERT INTO usage_ledger (event_id, stream_seq, occurred_at, provider, model,"
                " kind) VALUES (gen_random_uuid(), %s, now(), 'openai', %s, 'chat')",
                (seq, model),
            )
    migrate(pg_schema_url)
    assert await rows(pg_schema_url, "SELECT model FROM usage_ledger ORDER BY stream_seq") == [
        ("gpt-4o",),
        ("gpt-4o",),
        ("gpt-4o",),
        ("o3",),
        ("straße",),
    ]


async def test_the_upgrade_keys_the_ledger_s_google_resource_names(pg_schema_url: str) -> None:
    """Usage an earlier release recorded under Google's resource name of a model gets the
    bare model's key (0015); Fireworks' "accounts/fireworks/models/..." ids are names."""
    fireworks = "accounts/fireworks/models/deepseek-v3p2"
    migrate(pg_schema_url, revision="0014")
    async with await connect(pg_schema_url) as conn:
        for seq, model in enumerate((*GOOGLE_SPELLINGS, fireworks), start=1):
            await conn.execute(
                "INSERT INTO usage_ledger (event_id, stream_seq, occurred_at, provider, model,"
                " kind) VALUES (gen_random_uuid(), %s, now(), 'google', %s, 'chat')",
                (seq, model.lower()),
            )
    migrate(pg_schema_url)
    assert await rows(pg_schema_url, "SELECT model FROM usage_ledger ORDER BY stream_seq") == [
        ("gemini-2.0-flash",),
        ("gemini-2.0-flash",),
        ("gemini-2.0-flash",),
        (fireworks,),
    ]
