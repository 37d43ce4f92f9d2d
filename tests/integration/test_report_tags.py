"""Reports grouped by a tag (``group_by=["tag:team"]``) on real NATS and PostgreSQL: calls
carry ``tags`` (``budget.instrument(..., tags={"team": "a"})``), and an analyst asks what
each team spent. Read from the usage history's row per call: corrections and unpriced
calls count as in every other grouping, and the groups sum to the report's total."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from budget.config import Settings
from budget.reports import ReportGenerator
from events import Topology, UsageRecorded, UsageRepriced
from projections.registry import get_projection

from support import catch_up, publish, query_service, usage_event

pytestmark = pytest.mark.integration

FEB = datetime(2026, 2, 5, 12, tzinfo=UTC)
FEBRUARY = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)
JANUARY = datetime(2026, 1, 1, tzinfo=UTC), FEBRUARY[0]


def tagged(cost: str | None, at: datetime, **tags: str) -> UsageRecorded:
    return usage_event(cost=cost, at=at).model_copy(update={"tags": tags})


@pytest.fixture
async def generator(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> AsyncIterator[ReportGenerator]:
    """Asks over NATS, as a host app does; the query service runs in this process."""
    settings = Settings(
        nats_url=nats_url, database_url=db, subject_prefix=topology.prefix, spool_dir=tmp_path
    )
    async with query_service(nc, settings) as queries:
        yield ReportGenerator(queries)


async def test_a_report_by_tag_sums_each_tags_calls_corrections_included(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    mispriced = tagged("5.00", FEB, team="a")
    events = [
        mispriced,
        tagged("1.25", FEB, team="a", feature="search"),
        tagged("2.00", FEB + timedelta(days=3), team="b"),
        tagged(None, FEB, team="b"),
        tagged("0.50", FEB),  # no team
        tagged("9.00", JANUARY[0] + timedelta(days=3), team="a"),
    ]
    correction = UsageRepriced(
        occurred_at=mispriced.occurred_at,
        corrects=mispriced.event_id,
        cost=Decimal("0.75"),
        provider=mispriced.provider,
        model=mispriced.model,
        user_id=mispriced.user_id,
        project_id=mispriced.project_id,
        reason="test",
    )
    await publish(nc, topology, [*events, correction])
    await publish(nc, topology, events[:1], msg_id=False)  # a re-send counts once
    for name in ("reports", "history"):
        await catch_up(get_projection(name), nc, db, topology)

    report = await generator.generate_report(*FEBRUARY, group_by=["tag:team"])
    assert report.main.columns[0] == "tag:team"
    assert [
        (r["tag:team"], r["cost_usd"], r["requests"], r["unpriced_requests"], r["share_percent"])
        for r in report.main.records()
    ] == [
        ("a", Decimal("2.00"), 2, 0, Decimal("44.4")),
        ("b", Decimal("2.00"), 2, 1, Decimal("44.4")),
        (None, Decimal("0.50"), 1, 0, Decimal("11.1")),
    ]
    total = (await generator.generate_report(*FEBRUARY)).main.records()[0]
    assert total["cost_usd"] == Decimal("4.50") and total["requests"] == 5
    assert "| (none) | 0.50 | 1 | 0 |" in report.to_markdown()
    assert json.loads(report.to_json())["tables"][0]["rows"][2]["tag:team"] is None
    assert list(csv.reader(io.StringIO(report.to_csv())))[3][:2] == ["", "0.50"]

    compared = await generator.generate_comparison_report(
        *FEBRUARY, *JANUARY, group_by=["tag:team"]
    )
    assert [r[:3] for r in compared.main.rows] == [
        ("a", Decimal("2.00"), Decimal("9.00")),
        ("b", Decimal("2.00"), Decimal(0)),
        (None, Decimal("0.50"), Decimal(0)),
    ]
    by_feature = await generator.generate_report(*FEBRUARY, group_by="tag:feature")
    assert [(r["tag:feature"], r["requests"]) for r in by_feature.main.records()] == [
        (None, 4),
        ("search", 1),
    ]


async def test_a_tag_is_grouped_alone_and_by_name(generator: ReportGenerator) -> None:
    with pytest.raises(ValueError, match=r"group by one tag alone \(tag:team, user\)"):
        await generator.generate_report(*FEBRUARY, ["tag:team", "user"])
    with pytest.raises(ValueError, match=r"name the tag to group by, e\.g\. tag:team"):
        await generator.generate_report(*FEBRUARY, ["tag:"])
    with pytest.raises(ValueError, match="choose from provider, model, user, project, kind, or a"):
        await generator.generate_report(*FEBRUARY, ["team"])


async def test_the_history_lists_the_calls_of_a_tag(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """A report by team says what team b spent; its calls are then the history's, as over
    HTTP (``tag=team=b``): every tag given must match."""
    events = [
        tagged("1.00", FEB, team="b", feature="search"),
        tagged("2.00", FEB + timedelta(hours=1), team="b"),
        tagged("3.00", FEB + timedelta(hours=2), team="a", feature="search"),
        tagged("4.00", FEB + timedelta(hours=3)),
    ]
    await publish(nc, topology, events)
    await catch_up(get_projection("history"), nc, db, topology)
    team_b = await generator.get_usage_history(*FEBRUARY, tags={"team": "b"})
    assert [r["event_id"] for r in team_b.main.records()] == [str(e.event_id) for e in events[:2]]
    searched = await generator.get_usage_history(*FEBRUARY, tags={"team": "b", "feature": "search"})
    assert [r["cost_usd"] for r in searched.main.records()] == [Decimal("1.00")]
    assert 'tags: {"team": "b", "feature": "search"}' in searched.notes
