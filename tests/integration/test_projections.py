"""The projection engine's promises, proven for every projection on real NATS and
PostgreSQL: duplicates count once, redeliveries are skipped, a rebuild equals the live
version row for row."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import ClassVar

from nats.aio.client import Client

from budget.periods import Period
from events import (
    AlertRule,
    AlertRuleSet,
    BudgetPolicy,
    Event,
    LimitAction,
    PolicyDeleted,
    PolicySet,
    RequestBlocked,
    Topology,
    encode,
)
from events.envelope import new_event_id
from projections.alerts import AlertsProjection
from projections.db import connect
from projections.engine.deadletter import recent_dead_letters
from projections.engine.projection import Projection, physical
from projections.engine.rebuild import rebuild
from projections.history import HistoryProjection
from projections.policies import PoliciesProjection
from projections.reports import ReportsProjection
from projections.spend import SpendProjection

from ledger_logs import correction
from support import catch_up, publish, rows, start_of, usage_event, varied_events, wait_for

REFUSED = "refused-by-the-database"


async def refuse_rows_naming(text: str, db: str, table: str) -> None:
    """Make PostgreSQL refuse (a data exception) every row of ``table`` holding ``text``."""
    conn = await connect(db)
    try:
        await conn.execute(
            f"""CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF to_jsonb(NEW)::text LIKE '%{text}%' THEN
                    RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'data_exception';
                END IF;
                RETURN NEW;
            END $$""".encode()
        )
        await conn.execute(
            f"CREATE TRIGGER refuse_marked BEFORE INSERT ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION refuse_marked()".encode()
        )
    finally:
        await conn.close()


class ProjectionContract:
    """Subclassed once per projection; each subclass proves the same behaviour."""

    projection: ClassVar[Projection]
    count_query: ClassVar[str]
    """SQL giving one number that grows with every applied event (on the active view)."""

    def one_event(self) -> Event:
        """A new event that adds one to ``count_query``."""
        return usage_event()

    def many_events(self, count: int) -> list[Event]:
        """Varied events, the first three each adding one to ``count_query``; from 20 on,
        with corrections of some of them."""
        usage = varied_events(count)
        if count < 20:
            return list(usage)
        return [*usage, *(correction(event, Decimal("0.5")) for event in usage[3::40])]

    def refused_event(self) -> Event:
        """A valid event that ``refusing_table``'s trigger makes PostgreSQL refuse."""
        return usage_event(user=REFUSED)

    def refusing_table(self) -> str:
        """Where the projection stores ``refused_event``."""
        return "usage_ledger"

    async def snapshot(self, db: str, version: int) -> dict[str, list[tuple[object, ...]]]:
        return {
            table: sorted(
                await rows(db, f"SELECT * FROM {physical(table, version)}"),
                key=lambda row: [str(value) for value in row],
            )
            for table in self.projection.tables
        }

    async def test_event_published_twice_is_counted_once(
        self, nc: Client, db: str, topology: Topology
    ) -> None:
        event = self.one_event()
        # Without Nats-Msg-Id JetStream stores both copies (as after its duplicate window).
        await publish(nc, topology, [event, event], msg_id=False)
        await catch_up(self.projection, nc, db, topology)
        assert await rows(db, self.count_query) == [(1,)]

    async def test_jetstream_drops_a_resend_with_the_same_message_id(
        self, nc: Client, db: str, topology: Topology
    ) -> None:
        event = self.one_event()
        await publish(nc, topology, [event, event])
        info = await nc.jetstream().stream_info(topology.event_stream.name)
        assert info.state.messages == 1

    async def test_redelivered_events_at_or_below_checkpoint_are_skipped(
        self, nc: Client, db: str, topology: Topology
    ) -> None:
        await publish(nc, topology, self.many_events(20))
        await catch_up(self.projection, nc, db, topology)
        before = await self.snapshot(db, 1)
        # Forget the consumer: the next run redelivers everything from sequence 1.
        await nc.jetstream().delete_consumer(
            topology.event_stream.name, f"{self.projection.name}-v1"
        )
        await catch_up(self.projection, nc, db, topology)
        assert await self.snapshot(db, 1) == before

    async def test_rebuilt_version_equals_live_one_row_for_row(
        self, nc: Client, db: str, topology: Topology
    ) -> None:
        await publish(nc, topology, self.many_events(500))
        await catch_up(self.projection, nc, db, topology)
        version = await rebuild(
            self.projection, nc=nc, database_url=db, topology=topology, swap=False
        )
        assert version == 2
        live, rebuilt = await self.snapshot(db, 1), await self.snapshot(db, 2)
        assert all(live[t] for t in live), "the live tables should not be empty"
        assert rebuilt == live

    async def test_rebuild_builds_its_deferred_indexes_before_the_swap(
        self, nc: Client, db: str, topology: Topology
    ) -> None:
        await publish(nc, topology, self.many_events(200))
        await catch_up(self.projection, nc, db, topology)
        live, live_indexes = await self.snapshot(db, 1), await self.index_definitions(db, 1)
        assert await rebuild(self.projection, nc=nc, database_url=db, topology=topology) == 2
        assert await self.snapshot(db, 2) == live
        rebuilt_indexes = await self.index_definitions(db, 2)
        assert rebuilt_indexes == [d.replace("_v1", "_v2") for d in live_indexes]
        declared = [
            s.split(" ON ")[0].removeprefix("CREATE INDEX ") for s in self.projection.indexes(2)
        ]
        names = await rows(
            db,
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            " AND indexname = ANY(%s)",
            (declared,),
        )
        assert sorted(n for (n,) in names) == sorted(declared)

    async def index_definitions(self, db: str, version: int) -> list[str]:
        """Every index on the version's tables, as ``pg_indexes`` shows it."""
        found = await rows(
            db,
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            " AND tablename = ANY(%s) ORDER BY indexdef",
            ([physical(t, version) for t in self.projection.tables],),
        )
        return [definition for (definition,) in found]

    async def test_rebuild_swaps_the_views_and_drops_the_old_version(
        self, nc: Client, db: str, topology: Topology
    ) -> None:
        await publish(nc, topology, self.many_events(50))
        await catch_up(self.projection, nc, db, topology)
        before = await rows(db, self.count_query)
        assert await rebuild(self.projection, nc=nc, database_url=db, topology=topology) == 2
        assert await rows(db, self.count_query) == before
        assert await rows(
            db,
            "SELECT name, active_version FROM projection_registry WHERE name = %s",
            (self.projection.name,),
        ) == [(self.projection.name, 2)]
        leftovers = await rows(
            db,
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name LIKE %s",
            ("%\\_v1",),
        )
        assert leftovers == []

    async def test_malformed_message_is_dead_lettered_and_the_rest_applied(
        self, nc: Client, db: str, topology: Topology
    ) -> None:
        good = self.many_events(3)
        await publish(nc, topology, good[:1])
        js = nc.jetstream()
        event_type = self.projection.event_types[0]
        subject = topology.event_subject(event_type.SUBJECT)
        no_time = b'{"type": "%s", "schema_version": %d, "event_id": "%s"}' % (
            event_type.__name__.encode(),
            event_type.SCHEMA_VERSION,
            str(new_event_id()).encode(),
        )
        await js.publish(subject, no_time)
        await js.publish(subject, b"\xff not json")
        await publish(nc, topology, good[1:])
        await catch_up(self.projection, nc, db, topology)

        assert await rows(db, self.count_query) == [(3,)]
        dlq = topology.dead_letter_stream.name
        sub = await js.pull_subscribe(topology.dead_letter_subject(">"), stream=dlq)
        letters = await sub.fetch(2, timeout=5)
        assert [m.data for m in letters] == [no_time, b"\xff not json"]
        reasons = [m.headers["Budget-Dead-Letter-Reason"] for m in letters]
        assert "occurred_at: Field required" in reasons[0]
        assert reasons[1].startswith("not JSON")
        assert [m.headers["Budget-Original-Seq"] for m in letters] == ["2", "3"]

    async def test_event_the_database_refuses_is_dead_lettered_and_the_rest_applied(
        self, nc: Client, db: str, topology: Topology
    ) -> None:
        """Valid JSON and a valid event, but PostgreSQL refuses its row (as a trigger
        here; in production, a bound the contract missed)."""
        refused = self.refused_event()
        await catch_up(self.projection, nc, db, topology)  # its tables, for the trigger
        await refuse_rows_naming(REFUSED, db, self.refusing_table())
        await publish(nc, topology, [self.one_event(), refused, self.one_event()])
        await catch_up(self.projection, nc, db, topology)

        assert await rows(db, self.count_query) == [(2,)]
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            topology.dead_letter_subject(">"), stream=topology.dead_letter_stream.name
        )
        [letter] = await sub.fetch(1, timeout=5)
        assert letter.data == encode(refused)
        assert letter.headers["Budget-Dead-Letter-Reason"].startswith("rejected by the database")


class TestSpendProjection(ProjectionContract):
    projection = SpendProjection()
    count_query = "SELECT requests FROM spend_totals WHERE scope = 'global' AND period = 'monthly'"


class TestHistoryProjection(ProjectionContract):
    projection = HistoryProjection()
    count_query = "SELECT count(*) FROM usage_history"


class TestAlertsProjection(ProjectionContract):
    """Usage is what the evaluator counts; its alerts are proven in test_alerts.py."""

    projection = AlertsProjection()
    count_query = (
        "SELECT coalesce(sum(requests), 0) FROM alert_spend_buckets WHERE scope = 'global'"
    )

    def many_events(self, count: int) -> list[Event]:
        """Enough to fill every table: a small policy that the usage crosses, a rule, a
        refused request, an acknowledgement."""
        usage = super().many_events(count)
        if count < 20:
            return usage
        start = usage[0].occurred_at
        policy = BudgetPolicy(policy_id="small", name="small", limit_amount=Decimal("0.3"))
        rule = AlertRule(rule_id="half", name="half", threshold_percent=Decimal(50))
        blocked = RequestBlocked(
            occurred_at=start + timedelta(days=2),
            action=LimitAction.BLOCK,
            policy_ids=["small"],
            reason="test",
            model="gpt-4o",
            estimated_cost=Decimal(1),
            spend=Decimal(0),
            limit_amount=Decimal("0.3"),
        )
        return [
            PolicySet(occurred_at=start, policy=policy),
            AlertRuleSet(occurred_at=start, rule=rule),
            *usage,
            blocked,
        ]


class TestReportsProjection(ProjectionContract):
    projection = ReportsProjection()
    count_query = "SELECT coalesce(sum(requests), 0) FROM report_daily WHERE dimension = 'total'"


def policy_set(policy_id: str, name: str = "team cap", at: datetime | None = None) -> PolicySet:
    policy = BudgetPolicy(policy_id=policy_id, name=name, limit_amount=Decimal("50"))
    return PolicySet(occurred_at=at or datetime.now(UTC), policy=policy)


class TestPoliciesProjection(ProjectionContract):
    projection = PoliciesProjection()
    count_query = "SELECT count(*) FROM budget_policy_log"

    def one_event(self) -> Event:
        return policy_set(new_event_id().hex)

    def many_events(self, count: int) -> list[Event]:
        """Sets, replacements and deletions of a dozen policies, in time order."""
        start = start_of(Period.MONTHLY, ago=1)
        events: list[Event] = []
        for i in range(count):
            at, policy_id = start + timedelta(minutes=i), f"policy-{i % 12}"
            if i >= 12 and i % 7 == 0:
                events.append(PolicyDeleted(occurred_at=at, policy_id=policy_id))
            else:
                events.append(policy_set(policy_id, f"cap {i}", at))
        return events

    def refused_event(self) -> Event:
        return policy_set(new_event_id().hex, name=REFUSED)

    def refusing_table(self) -> str:
        return physical("budget_policy_log", 1)


async def test_old_schema_version_in_the_log_is_upcast_and_applied(
    nc: Client, db: str, topology: Topology
) -> None:
    v1 = (
        b'{"type": "UsageRecorded", "schema_version": 1,'
        b' "event_id": "0b4a4b8e-4a0e-4c39-9a44-5a0f0b1d1e01",'
        b' "occurred_at": "2026-03-01T10:00:00Z", "provider": "openai", "model": "gpt-4o",'
        b' "input_tokens": 1000, "cached_tokens": 200, "output_tokens": 100, "cost": 0.004}'
    )
    await nc.jetstream().publish(topology.event_subject("usage.recorded"), v1)
    await catch_up(HistoryProjection(), nc, db, topology)
    assert await rows(
        db, "SELECT input_uncached, input_cache_read, output_text, cost FROM usage_history"
    ) == [(800, 200, 100, Decimal("0.004"))]


async def test_a_dead_letter_of_a_message_near_the_size_limit_is_cut_and_the_rest_applied(
    nc: Client, db: str, topology: Topology
) -> None:
    """The letter's headers come on top of the message: sent whole, they would pass
    NATS's max_payload, and the server would drop the connection at every try."""
    js = nc.jetstream()
    garbage = b"x" * (nc.max_payload - 64)
    await js.publish(topology.event_subject("usage.recorded"), garbage)
    await publish(nc, topology, varied_events(3))
    consumer = asyncio.create_task(catch_up(SpendProjection(), nc, db, topology))
    try:

        async def all_applied() -> bool:
            """the consumer applied the events after the oversized message"""
            return await rows(db, "SELECT stream_seq FROM projection_checkpoints") == [(4,)]

        await wait_for(all_applied)
        await consumer
    finally:
        consumer.cancel()

    assert await rows(
        db, "SELECT requests FROM spend_totals WHERE scope = 'global' AND period = 'monthly'"
    ) == [(3,)]
    [letter] = await recent_dead_letters(js, topology)
    assert letter.reason.startswith("not JSON")
    assert letter.original_seq == 1
    stored = await js.get_msg(topology.dead_letter_stream.name, letter.seq)
    assert stored.data and garbage.startswith(stored.data)
    assert stored.headers is not None
    assert stored.headers["Budget-Original-Size"] == str(len(garbage))


def test_encode_is_what_the_contract_documents() -> None:
    assert b'"type":"UsageRecorded"' in encode(usage_event())
