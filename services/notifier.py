"""``budget notifier``: sends queued alerts, once per alert and channel.

One loop per channel, so a webhook that fails for hours never delays email or NATS. Each
loop takes its channel's due rows in the order the alerts were raised, sends each, and
records its outcome as soon as it is confirmed (NATS: after one flush of the round), so a
notifier that dies mid-round sends again at most the alert it was sending. A failure of
the channel (its receiver is down) is retried with exponential backoff (up to
``max_backoff``) and holds back the channel's later alerts, so receivers see them in
order; once one alert has failed ``suspect_after`` times, the next is tried after it in
each round (not on a batched channel, NATS, whose sends are confirmed together). If that
one goes out the channel works: the first is tried once more at once, and failing again
it is retried alone (it fails on its own: a receiver answering 500 to its content), so no
one alert holds a channel for long.
An alert its receiver refuses (``Rejected``: a webhook's 400, 413, 415, 422, a mail
server refusing this message) is retried with backoff on its own, while the later ones go
out. Either is marked ``failed``
after ``give_up_after``. An alert that can never go out on a channel (it cannot be rendered
for it: ``Undeliverable``) is marked ``failed`` with the reason at once. Alerts for a
channel that is not enabled in ``alert_channels`` are marked ``skipped``. Each send is one
turn of the channel's loop (``services.liveness``). The evaluator's NOTIFY wakes the
loops; without it they look every ``poll_interval``. One notifier per channel is active
at a time (an advisory lock); others wait as standbys.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from nats.aio.client import Client
from pydantic import ValidationError

from budget.config import Settings
from budget.one_line import one_line
from budget.redaction import redact
from budget.waits import wait_set
from events import Alert
from events.alerts import CHANNELS
from projections.alerts import OUTBOX_CHANNEL
from projections.db import connect
from projections.engine.metrics import from_zero
from projections.engine.projection import Connection
from services.channels import Rejected, Sender, Undeliverable, senders, undeliverable
from services.liveness import Liveness, Loop
from services.metrics import ALERT_DELIVERIES, DELIVERY_OUTCOMES

__all__ = ["Notifier", "NotifierConfig", "serve_notifier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class NotifierConfig:
    poll_interval: float = 1.0
    max_backoff: float = 30.0
    give_up_after: timedelta = timedelta(days=1)
    batch: int = 100
    stall_after: float = 300.0
    """Seconds one send (or one look at the outbox) may take, or a loop may keep failing
    (its database unreachable), before it counts as stalled."""
    suspect_after: int = 5
    """Failed sends of one alert that hold its channel before the next alert is tried
    too: if that one goes out and the first fails once more, the first fails on its own
    (it is then retried alone, as a refused alert is), so one alert cannot hold a
    channel for ``give_up_after``."""


class Notifier:
    def __init__(
        self,
        settings: Settings,
        nc: Client,
        config: NotifierConfig | None = None,
        *,
        liveness: Liveness | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or NotifierConfig()
        self.senders = senders(settings.alert_channels, nc, settings.topology)
        self.liveness = liveness or Liveness()
        self._wake: dict[str, asyncio.Event] = {channel: asyncio.Event() for channel in CHANNELS}

    async def run(self, stop: asyncio.Event) -> None:
        from_zero(ALERT_DELIVERIES, *itertools.product(CHANNELS, DELIVERY_OUTCOMES))
        stall_after = self.config.stall_after
        listen = self.liveness.loop("notifier outbox listener", stall_after=stall_after)
        tasks = [listen.start(self._listen(stop, listen))]
        for channel in CHANNELS:
            loop = self.liveness.loop(f"notifier {channel} loop", stall_after=stall_after)
            tasks.append(loop.start(self._channel(channel, stop, loop)))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self, stop: asyncio.Event, loop: Loop) -> None:
        while not stop.is_set():
            try:
                conn = await connect(self.settings.database_url)
                try:
                    await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
                    loop.recovered()
                    async for _ in conn.notifies():
                        for event in self._wake.values():
                            event.set()
                finally:
                    await conn.close()
            except (psycopg.Error, OSError) as exc:
                if loop.failing(f"database unavailable: {exc}"):
                    log.warning(
                        "notifier: lost the outbox notifications (%s); polling until they are back",
                        one_line(str(exc)),
                    )
                await asyncio.sleep(self.config.poll_interval)

    async def _channel(self, channel: str, stop: asyncio.Event, loop: Loop) -> None:
        while not stop.is_set():
            try:
                conn = await connect(self.settings.database_url)
                try:
                    await self._hold_lock(conn, channel, stop, loop)
                    await self._deliver_until(stop, conn, channel, loop)
                finally:
                    await conn.close()
            except (psycopg.Error, OSError) as exc:
                # Once per outage, not at every retry: a restart of PostgreSQL (which
                # `budget up` makes when it dies) otherwise floods the log, one loop per
                # channel, with the same libpq message.
                if loop.failing(f"database unavailable: {exc}"):
                    log.warning(
                        "notifier %s: database unavailable (%s); retrying every %gs until"
                        " it is back",
                        channel,
                        one_line(str(exc)),
                        self.config.poll_interval,
                    )
                await asyncio.sleep(self.config.poll_interval)
            except Exception as exc:  # a fault no alert should cause: logged, and the loop goes on
                loop.failing(_reason(exc))
                log.exception("notifier %s failed; starting over", channel)
                await asyncio.sleep(self.config.poll_interval)

    async def _hold_lock(
        self, conn: Connection, channel: str, stop: asyncio.Event, loop: Loop
    ) -> None:
        key = int.from_bytes(
            hashlib.blake2b(f"notifier:{channel}".encode(), digest_size=8).digest(),
            "big",
            signed=True,
        )
        while not stop.is_set():
            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))).fetchone()
            if row and row[0]:
                return
            loop.recovered()  # a standby, waiting: healthy
            await asyncio.sleep(self.config.poll_interval)

    async def _deliver_until(
        self, stop: asyncio.Event, conn: Connection, channel: str, loop: Loop
    ) -> None:
        """Deliver until ``stop``, not only until cancelled: on Python 3.11 a cancellation
        can be swallowed by ``asyncio.wait_for`` (aiosmtplib's, waiting for a server's
        answer) when its wait ends at the same moment, and the loop would then run on
        after the notifier was told to stop."""
        wake = self._wake[channel]
        while not stop.is_set():
            wake.clear()
            pause = await self.deliver_due(conn, channel, loop)
            if pause is None:
                await wait_set(wake, self.config.poll_interval)
            else:
                await asyncio.sleep(pause)

    async def deliver_due(self, conn: Connection, channel: str, loop: Loop) -> float | None:
        """Send the channel's due alerts in raised order, each send one turn of ``loop``
        and recorded as soon as it is confirmed. Returns None when every due alert went
        out, else the seconds to wait before the next round: 0 when more are due, the
        backoff after a failure of the channel (its alert is tried again first)."""
        with loop.turn():
            cursor = await conn.execute(
                # failing for give_up_after: a day of failures, not a day in the queue
                "SELECT alert_id, payload::text, attempts, (now() - failing_since > %s) IS TRUE"
                " FROM alert_outbox WHERE channel = %s AND status = 'pending'"
                " AND next_attempt_at <= now() ORDER BY seq LIMIT %s",
                (self.config.give_up_after, channel, self.config.batch),
            )
            rows = await cursor.fetchall()
        pause = None if len(rows) < self.config.batch else 0.0
        sender = self.senders.get(channel)
        if sender is None:
            with loop.turn():
                await self._record(conn, [r[0] for r in rows], channel, "skipped", "not enabled")
            return pause
        handed: list[tuple[object, int, bool]] = []  # alert_id, attempts, too_old
        suspect: _Suspect | None = None
        for alert_id, payload, attempts, too_old in rows:
            with loop.turn():
                failure = await _attempt(sender, conn, payload)
                if failure is None:
                    if sender.batched:
                        handed.append((alert_id, attempts, too_old))
                    else:
                        await self._record(conn, [alert_id], channel, "sent", None)
                    if suspect is not None:
                        await self._try_suspect_again(conn, channel, sender, suspect)
                        suspect = None
                    continue
                if isinstance(failure, Undeliverable):
                    await self._give_up(conn, channel, alert_id, "cannot go out", failure)
                    continue
                if too_old:
                    await self._give_up(conn, channel, alert_id, "giving up", failure)
                    continue
                alone = isinstance(failure, Rejected)
                backoff = await self._retry_later(conn, channel, alert_id, attempts, failure, alone)
                if alone:
                    continue
                if (
                    suspect is None
                    and not sender.batched
                    and attempts + 1 >= self.config.suspect_after
                ):
                    suspect = _Suspect(alert_id, payload, attempts + 1, backoff)
                    continue
                pause = backoff if suspect is None else suspect.backoff
                break
        if suspect is not None and pause is None:  # no later alert to tell: the channel waits
            pause = suspect.backoff
        if handed:
            with loop.turn():
                try:
                    await sender.flush()
                except Exception as exc:
                    # None confirmed, each failed as the channel's: sent again (the same id)
                    # after the backoff, the reason recorded (e.g. the server refusing the
                    # credential every publish: they would otherwise be recorded sent).
                    return await self._unconfirmed(conn, channel, handed, exc)
                await self._record(conn, [h[0] for h in handed], channel, "sent", None)
        return pause

    async def _unconfirmed(
        self, conn: Connection, channel: str, handed: list[tuple[object, int, bool]], exc: Exception
    ) -> float:
        """Record the failure of a round its channel did not confirm; the pause after it."""
        pauses = [self.config.poll_interval]
        for alert_id, attempts, too_old in handed:
            if too_old:
                await self._give_up(conn, channel, alert_id, "giving up", exc)
            else:
                pauses.append(
                    await self._retry_later(conn, channel, alert_id, attempts, exc, alone=False)
                )
        return max(pauses)

    async def _give_up(
        self, conn: Connection, channel: str, alert_id: object, what: str, exc: Exception
    ) -> None:
        why = _reason(exc)
        await self._record(conn, [alert_id], channel, "failed", why)
        log.error("alert %s via %s: %s: %s", alert_id, channel, what, why)

    async def _retry_later(
        self,
        conn: Connection,
        channel: str,
        alert_id: object,
        attempts: int,
        exc: Exception,
        alone: bool,
    ) -> float:
        """Record a failed send; returns its backoff. An alert retried ``alone`` waits it
        out in the outbox while the next ones go; otherwise the channel waits."""
        why = _reason(exc)
        backoff = min(2.0 ** min(attempts, 32), self.config.max_backoff)  # 2.0**1024 overflows
        await conn.execute(
            "UPDATE alert_outbox SET attempts = attempts + 1, last_error = %s,"
            " next_attempt_at = now() + %s * interval '1 second',"
            " failing_since = coalesce(failing_since, now())"
            " WHERE alert_id = %s AND channel = %s",
            (why, backoff if alone else 0.0, alert_id, channel),
        )
        if not alone:  # the channel fails: the alerts waiting behind this one fail with it
            await conn.execute(
                "UPDATE alert_outbox SET failing_since = now() WHERE channel = %s"
                " AND status = 'pending' AND failing_since IS NULL",
                (channel,),
            )
        ALERT_DELIVERIES.labels(channel, "retried").inc()
        log.warning("alert %s via %s failed (%s); retry in %.0fs", alert_id, channel, why, backoff)
        return backoff

    async def _try_suspect_again(
        self, conn: Connection, channel: str, sender: Sender, suspect: _Suspect
    ) -> None:
        """The alert after ``suspect`` went out, so the channel works: the suspect once
        more at once (the receiver may just be back); failing again, it fails on its own
        and is retried alone, with backoff, while the later alerts go."""
        failure = await _attempt(sender, conn, suspect.payload)
        if failure is None:
            await self._record(conn, [suspect.alert_id], channel, "sent", None)
            return
        await self._retry_later(
            conn, channel, suspect.alert_id, suspect.attempts, failure, alone=True
        )
        log.warning(
            "alert %s via %s keeps failing while later ones go out: retried on its own",
            suspect.alert_id,
            channel,
        )

    async def _record(
        self, conn: Connection, alert_ids: list[object], channel: str, status: str, why: str | None
    ) -> None:
        if not alert_ids:
            return
        await conn.execute(
            "UPDATE alert_outbox SET status = %s, attempts = attempts + 1, last_error = %s,"
            " sent_at = CASE WHEN %s = 'sent' THEN now() END"
            " WHERE channel = %s AND alert_id = ANY(%s)",
            (status, why, status, channel, alert_ids),
        )
        ALERT_DELIVERIES.labels(channel, status).inc(len(alert_ids))


@dataclass(frozen=True)
class _Suspect:
    """An alert that failed as if the channel were down ``suspect_after`` times or more,
    while the next one is tried."""

    alert_id: object
    payload: str
    attempts: int
    backoff: float


async def _attempt(sender: Sender, conn: Connection, payload: str) -> Exception | None:
    """Send one stored alert; what made it fail, if anything."""
    try:
        with undeliverable(ValidationError):
            alert = Alert.model_validate_json(payload)
        await sender.send(alert, payload.encode(), conn)
    except Exception as exc:
        return exc
    return None


def _reason(exc: Exception) -> str:
    """What is recorded about a failed send, for ``budget alerts show``, the API and the
    query service: redacted, as every text an operator sees is (a NUL would make
    PostgreSQL refuse it)."""
    return redact(f"{type(exc).__name__}: {exc}".replace("\x00", ""))[:500]


async def serve_notifier(
    nc: Client, settings: Settings, stop: asyncio.Event, liveness: Liveness
) -> None:
    """Run a notifier on ``nc`` until ``stop``, its loops reported to ``liveness``."""
    await Notifier(settings, nc, liveness=liveness).run(stop)
