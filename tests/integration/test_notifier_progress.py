"""The notifier on a real webhook and PostgreSQL: each send is one turn of its channel's
loop, so a slow receiver keeps it healthy while it progresses; each send is recorded as
soon as it is confirmed, so a notifier killed mid-round sends nothing again that was
delivered; an alert its receiver refuses (400) is retried on its own until it goes out,
while the later ones go ahead; a notifier that cannot reach its database is reported
stalled until it is back."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from budget.config import Settings
from events import Topology
from events.alerts import CHANNELS
from projections.db import connect
from projections.migrate import migrate
from services.embedded import EmbeddedNats, EmbeddedPostgres
from services.liveness import Liveness
from services.notifier import NotifierConfig

from alerting import (
    Webhook,
    alert_settings,
    notifier,
    outbox,
    queue_alerts,
    smtp_server,
    webhook_server,
)
from support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def hook() -> Iterator[Webhook]:
    with webhook_server() as server:
        yield server


@pytest.fixture
def settings(
    nats_url: str, db: str, topology: Topology, tmp_path: Path, hook: Webhook
) -> Iterator[Settings]:
    with smtp_server() as box:
        yield alert_settings(nats_url, db, topology, tmp_path, hook, box)


async def all_sent(db: str, count: int) -> None:
    async def sent() -> bool:
        """every queued webhook delivery is recorded as sent"""
        queued = await outbox(db)
        return len(queued) == count and all(r[2] == "sent" for r in queued)

    await wait_for(sent, within=30)


async def test_a_slow_webhook_keeps_the_notifier_healthy_while_it_sends(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    def slowly(key: str) -> int:
        time.sleep(0.5)  # a receiver taking its time; runs in the webhook's own thread
        return 200

    hook.respond = slowly
    ids = await queue_alerts(db, 10)  # 5 s of sending, past the stall limit
    liveness = Liveness()
    seen: list[str] = []
    async with notifier(nc, settings, NotifierConfig(stall_after=3.0), liveness):

        async def delivered() -> bool:
            """every alert reached the webhook (health sampled meanwhile)"""
            seen.extend(liveness.problems())
            return hook.keys() == ids

        await wait_for(delivered, within=30, interval=0.05)
        await all_sent(db, len(ids))
    assert seen == []


async def test_a_notifier_killed_mid_round_sends_nothing_again_that_was_delivered(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    ids = await queue_alerts(db, 5)
    in_flight, release = threading.Event(), threading.Event()

    def hold_the_third(key: str) -> int:
        """The third alert's first POST hangs until released, then fails: it was not
        delivered when the notifier died."""
        if key == ids[2] and not in_flight.is_set():
            in_flight.set()
            release.wait(timeout=30)
            return 503
        return 200

    hook.respond = hold_the_third
    try:
        async with notifier(nc, settings, NotifierConfig()) as running:

            async def third_in_flight() -> bool:
                """two alerts delivered, the third one being sent"""
                return in_flight.is_set()

            await wait_for(third_in_flight)
            running.cancel()  # killed mid-round
    finally:
        release.set()
    assert hook.keys() == ids[:2]
    async with notifier(nc, settings, NotifierConfig()):
        await all_sent(db, len(ids))
    assert hook.keys() == ids


async def test_an_alert_the_webhook_refuses_is_retried_alone_until_it_goes_out(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    ids = await queue_alerts(db, 3)
    refused = {ids[0]}  # e.g. a signature check failing for it, or a receiver misconfigured
    hook.respond = lambda key: 400 if key in refused else 200
    async with notifier(nc, settings, NotifierConfig(max_backoff=0.5)):

        async def retried() -> bool:
            """the later alerts went out while the refused one is retried, not dropped"""
            status, attempts = next(r[2:] for r in await outbox(db) if str(r[0]) == ids[0])
            return hook.keys() == ids[1:] and status == "pending" and attempts >= 3

        await wait_for(retried)
        refused.clear()  # the receiver is fixed
        await all_sent(db, len(ids))
    assert hook.keys() == [*ids[1:], ids[0]]


async def test_an_alert_refused_for_hours_still_backs_off_while_the_next_go_out(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    """Past a thousand tries (hours at the longest backoff) the backoff still holds."""
    ids = await queue_alerts(db, 3)
    hook.respond = lambda key: 400 if key == ids[0] else 200
    async with await connect(db) as conn:
        await conn.execute("UPDATE alert_outbox SET attempts = 2000 WHERE alert_id = %s", (ids[0],))
    async with notifier(nc, settings, NotifierConfig(max_backoff=30, poll_interval=0.2)):

        async def retried() -> bool:
            """the later alerts went out and the refused one waits for its next try"""
            status, attempts = next(r[2:] for r in await outbox(db) if str(r[0]) == ids[0])
            return hook.keys() == ids[1:] and (status, attempts) == ("pending", 2001)

        await wait_for(retried)


async def test_an_alert_that_keeps_failing_holds_its_channel_only_until_the_next_goes_out(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    """A receiver answering 500 to one alert's content looks like a channel down: it holds
    the later alerts for ``suspect_after`` tries, then the next is tried, goes out, and
    the first is retried alone."""
    ids = await queue_alerts(db, 3)
    failing = {ids[0]}
    hook.respond = lambda key: 500 if key in failing else 200
    async with notifier(nc, settings, NotifierConfig(max_backoff=0.5, suspect_after=3)):

        async def went_past_it() -> bool:
            """the later alerts went out while the failing one is retried, not dropped"""
            status, attempts = next(r[2:] for r in await outbox(db) if str(r[0]) == ids[0])
            return hook.keys() == ids[1:] and status == "pending" and attempts >= 4

        await wait_for(went_past_it)
        failing.clear()
        await all_sent(db, len(ids))
    assert hook.keys() == [*ids[1:], ids[0]]


async def test_a_channel_down_holds_its_alerts_in_order_while_the_next_is_tried(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    """Every alert failing: trying the next one after a suspect sends nothing out of
    order, and the channel back (at the first alert's next try) delivers them all in the
    order they were raised."""
    ids = await queue_alerts(db, 3)
    receiver = {"down": True, "back_at_first": False}

    def respond(key: str) -> int:
        if receiver["back_at_first"] and key == ids[0]:
            receiver["down"] = False
        return 500 if receiver["down"] else 200

    hook.respond = respond
    async with notifier(nc, settings, NotifierConfig(max_backoff=0.5, suspect_after=2)):

        async def tried_past_the_first() -> bool:
            """the second alert was tried (and failed) after the first kept failing"""
            attempts = {str(r[0]): r[3] for r in await outbox(db)}
            return attempts[ids[0]] >= 4 and attempts[ids[1]] >= 2

        await wait_for(tried_past_the_first)
        assert hook.keys() == []
        attempts = {str(r[0]): r[3] for r in await outbox(db)}
        assert attempts[ids[2]] == 0  # the second failing too: the channel is down, stop
        receiver["back_at_first"] = True
        await all_sent(db, len(ids))
    assert hook.keys() == ids


async def test_a_suspect_is_tried_again_at_once_when_the_next_alert_goes_out(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    """A receiver that comes back just as the next alert is tried: the first alert goes
    right after it, one place late, and is not left to wait out a backoff of its own."""
    ids = await queue_alerts(db, 3)
    receiver = {"down": True}

    def respond(key: str) -> int:
        if key == ids[1]:
            receiver["down"] = False
        return 500 if receiver["down"] else 200

    hook.respond = respond
    async with notifier(nc, settings, NotifierConfig(max_backoff=30, suspect_after=2)):
        await all_sent(db, len(ids))
    assert hook.keys() == [ids[1], ids[0], ids[2]]


async def test_a_notifier_that_cannot_reach_its_database_is_reported_until_it_is_back(
    nc: Client,
    nats_url: str,
    topology: Topology,
    tmp_path: Path,
    hook: Webhook,
    embedded_postgres: EmbeddedPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = embedded_postgres.url
    migrate(db)
    liveness = Liveness()
    config = NotifierConfig(stall_after=1.0, poll_interval=0.2)
    with smtp_server() as box:
        settings = alert_settings(nats_url, db, topology, tmp_path, hook, box)
        async with notifier(nc, settings, config, liveness):
            ids = await queue_alerts(db, 1)

            async def delivered() -> bool:
                """the webhook got every alert queued and the notifier is healthy"""
                return hook.keys() == ids and liveness.problems() == []

            await wait_for(delivered)
            # stopped only once the send is recorded: stopped between the two, the notifier
            # would rightly send it again
            await all_sent(db, 1)
            embedded_postgres.stop()

            async def failing() -> bool:
                """the webhook loop, retrying the database, is reported stalled"""
                return any(
                    p.startswith("notifier webhook loop stalled: failing for")
                    for p in liveness.problems()
                )

            await wait_for(failing)
            # retried every 0.2 s for over a second, said once per loop, each on one line
            said = Counter(
                r.getMessage().split(":")[0]
                for r in caplog.records
                if r.name == "services.notifier" and "unavailable" in r.getMessage()
            )
            assert said == {f"notifier {c}": 1 for c in CHANNELS}, said
            lost = [
                r.getMessage() for r in caplog.records if "outbox notifications" in r.getMessage()
            ]
            assert len(lost) == 1 and "\n" not in lost[0], lost
            embedded_postgres.start()
            ids += await queue_alerts(db, 1)
            await wait_for(delivered)


async def test_nats_alerts_are_recorded_sent_only_once_the_server_has_them(
    embedded_nats: EmbeddedNats, db: str, topology: Topology, tmp_path: Path, hook: Webhook
) -> None:
    """While the NATS client reconnects, a publish only buffers in the notifier's memory:
    alerts are not recorded sent then, so a notifier restarted before NATS is back still
    sends each of them once."""
    with smtp_server() as box:
        settings = alert_settings(embedded_nats.url, db, topology, tmp_path, hook, box)
    nc = await nats.connect(embedded_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        embedded_nats.stop()
        ids = await queue_alerts(db, 3, channel="nats")
        async with notifier(nc, settings, NotifierConfig(poll_interval=0.2)):

            async def tried() -> bool:
                """the notifier tried the NATS channel while NATS was down"""
                return any(attempts > 0 for *_, attempts in await outbox(db))

            await wait_for(tried)
            assert {status for _, _, status, _ in await outbox(db)} == {"pending"}
    finally:
        await nc.close()  # the notifier restarts before NATS is back

    embedded_nats.start()
    received: Counter[str] = Counter()
    listener = await nats.connect(embedded_nats.url)
    nc = await nats.connect(embedded_nats.url)
    try:

        async def on_alert(msg: Msg) -> None:
            received[(msg.headers or {})["Nats-Msg-Id"]] += 1

        await listener.subscribe(f"{topology.prefix}.alerts.>", cb=on_alert)
        await listener.flush()
        async with notifier(nc, settings, NotifierConfig(poll_interval=0.2)):

            async def sent() -> bool:
                """every NATS delivery is recorded as sent"""
                return {status for _, _, status, _ in await outbox(db)} == {"sent"}

            await wait_for(sent)
        await listener.flush()

        async def heard() -> bool:
            """the listener heard every alert"""
            return set(received) == set(ids)

        await wait_for(heard)
        assert all(received[i] == 1 for i in ids)
    finally:
        await listener.close()
        await nc.close()


async def test_an_alert_queued_a_day_before_a_notifier_ran_gets_a_day_of_tries_not_one(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    """Given up "after a day of failures" (docs/alerts.md) was counted from when the alert
    was queued: one queued while no notifier ran for a day was given up at its first
    failed try. One failing for a day is given up, as before."""
    ids = await queue_alerts(db, 2)
    async with await connect(db) as conn:
        await conn.execute("UPDATE alert_outbox SET created_at = now() - interval '2 days'")
        await conn.execute(
            "UPDATE alert_outbox SET failing_since = now() - interval '25 hours', attempts = 9"
            " WHERE alert_id = %s",
            (ids[1],),
        )
    down = True
    hook.respond = lambda key: 500 if down else 200
    async with notifier(nc, settings, NotifierConfig(max_backoff=0.2, poll_interval=0.1)):

        async def judged() -> bool:
            """the old queued alert failed and waits for its next try; the one failing for
            a day was given up"""
            found = {str(r[0]): r[2:] for r in await outbox(db)}
            return (
                found[ids[0]][0] == "pending"
                and found[ids[0]][1] >= 2
                and found[ids[1]][0] == "failed"
            )

        await wait_for(judged)
        down = False  # the receiver is back

        async def delivered() -> bool:
            """the alert queued before any notifier ran went out"""
            return any(str(r[0]) == ids[0] and r[2] == "sent" for r in await outbox(db))

        await wait_for(delivered)
    assert hook.keys() == [ids[0]]


async def test_the_alerts_waiting_behind_a_failing_channel_fail_with_it(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    """Only the alerts tried had counted their day of failures: those held back behind a
    channel down for days never aged, and all went out days old once it was back."""
    ids = await queue_alerts(db, 3)
    hook.respond = lambda key: 500
    async with notifier(nc, settings, NotifierConfig(max_backoff=30, poll_interval=0.1)):

        async def failed_once() -> bool:
            """the channel's first alert was tried and failed"""
            return any(str(r[0]) == ids[0] and r[3] >= 1 for r in await outbox(db))

        await wait_for(failed_once)
    async with await connect(db) as conn:
        cursor = await conn.execute(
            "SELECT alert_id::text, attempts, failing_since IS NOT NULL FROM alert_outbox"
            " ORDER BY seq"
        )
        rows = await cursor.fetchall()
    assert [(alert_id, failing) for alert_id, _, failing in rows] == [(i, True) for i in ids]
    assert [attempts for _, attempts, _ in rows][1:] == [0, 0], "held back, never tried"
