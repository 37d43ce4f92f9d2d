"""Pipelined publishing of events to JetStream, with a local spool when NATS is away.

Many publishes are in flight at once; each carries its event id as ``Nats-Msg-Id``.
An event leaves memory only when JetStream has acknowledged it or it is in the spool
(written off the loop, many events to a commit: ``budget.spool_writer``); the spool is
re-sent right after each connect and reconnect, and every ``flush_interval`` seconds. A
publisher started while NATS is unreachable tries again after a pause doubling from
``CONNECT_RETRY_FIRST`` to ``CONNECT_RETRY_MAX`` seconds (nats-py reconnects by itself
once it has connected).

An event larger than the server's ``max_payload`` (headers included: nats-py counts only
the payload, and the server drops the connection over it) is refused by ``publish`` with
``ValueError`` once the limit is known; one spooled before (while NATS was unreachable)
is moved to the spool's dead letters when it comes to be sent, never re-sent.

Events handed over within ``linger`` seconds go out in one write: an app recording one
event per turn of its loop (each call awaiting real I/O) would otherwise pay a socket
write, and NATS a read, per event, ~80 µs of CPU each against ~45 µs for the rest of a
``record_usage`` (``bench/instrument.py``). Acks take the raw dispatch path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from budget.config import Settings, shown_url
from budget.nats_dispatch import raw_handlers
from budget.natsconn import (
    PermissionDenied,
    connect_nats,
    nats_options,
    on_refusal,
    refusal_message,
)
from budget.spool import Spool, SpooledEvent
from budget.spool_writer import SpoolWriter
from budget.waits import wait_set
from events import Event, Topology, UsageRecorded, encode
from events.codec import HEADER_MSG_ID

__all__ = ["EventPublisher", "NotStored", "PublisherConfig", "SpoolFailing"]

log = logging.getLogger(__name__)

_ACK_SEQUENCE = re.compile(rb'"seq":\s*(\d+)')
"""The stream sequence in a JetStream publish acknowledgement (a regex: acks are many)."""

CONNECT_RETRY_FIRST = 0.5
CONNECT_RETRY_MAX = 10.0

FLUSH_SPOOL_WAIT = 10.0
"""Seconds a ``flush`` waits by default beyond ``ack_timeout``: for a spool commit, which
may wait 5 s for another process's (``budget.spool``'s busy timeout) before its fsync."""


@dataclass(frozen=True, kw_only=True, repr=False)
class PublisherConfig:
    nats_url: str
    topology: Topology
    spool_dir: Path
    flush_interval: float = 300.0
    ack_timeout: float = 5.0
    max_in_flight: int = 8192
    linger: float = 0.002
    """Seconds an event may wait for others to share its write to NATS."""
    connect_timeout: float = 2.0
    nats_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """``nats.connect`` options: credentials, TLS (``budget.natsconn.nats_options``)."""
    nats_user: str | None = None
    """Also whom usage is published by: on ``<prefix>.events.usage.recorded.<nats_user>``,
    the only usage subject a host credential may publish on (the bare one without a
    user)."""

    def __repr__(self) -> str:
        """The dataclass's, the URL's password masked (a traceback's locals, a debugger
        show it)."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown["nats_url"] = shown_url(self.nats_url)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def from_settings(cls, settings: Settings) -> PublisherConfig:
        return cls(
            nats_url=settings.nats_url,
            nats_options=nats_options(settings),
            nats_user=settings.nats_user,
            topology=settings.topology,
            spool_dir=settings.spool_dir,
            flush_interval=settings.flush_interval,
        )


class SpoolFailing(OSError):
    """NATS is unreachable and the spool fails too: the event cannot be recorded."""


class NotStored(TimeoutError):
    """A ``flush`` timed out with events stored neither in JetStream nor in the spool;
    they wait in memory, still offered to both (the message says how many and why)."""


_HEADER_BYTES = len(f"NATS/1.0\r\n{HEADER_MSG_ID}: \r\n\r\n")
"""The header block of a publish, but for the event id in it."""


@dataclass(frozen=True, slots=True)
class _InFlight:
    item: SpooledEvent
    sent_at: float
    from_spool: bool


@dataclass(slots=True, eq=False)  # each waiter is itself: found and removed by identity
class _Flush:
    """A ``flush`` waiting: for the events in flight up to ``token``, then for the spool
    changes handed over by the time they were settled (``change``, once known)."""

    token: int
    done: asyncio.Future[None]
    change: int | None = None


class EventPublisher:
    def __init__(self, config: PublisherConfig) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir)
        self._spooling = SpoolWriter(
            self.spool, linger=config.linger, after_commit=self._after_spool_commit
        )
        self._nc: Client | None = None
        self._inbox = ""
        self._next = 0
        self._in_flight: dict[int, _InFlight] = {}
        self._unwritten: list[int] = []
        """Tokens in flight not yet handed to the client, written together after ``linger``."""
        self._writer: asyncio.Task[None] | None = None
        self._flushes: list[_Flush] = []
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._resend_now = asyncio.Event()
        self._closed = False
        self._forbidden: set[str] = set()
        """Subjects (lowercased) the server refused this credential: never sent again."""
        self.stored_up_to = 0
        """The highest stream sequence JetStream acknowledged for an event of this
        publisher: a reader of a projection waits for it to have applied that far."""
        self.on_connect: list[Callable[[Client], Awaitable[None]]] = []
        """Called with each new connection (e.g. to subscribe on it)."""

    async def start(self) -> None:
        await self._connect()
        self._tasks = [
            asyncio.create_task(self._expire_unacked()),
            asyncio.create_task(self._resend_spool_periodically()),
        ]
        if self._nc is None:
            self._tasks.append(asyncio.create_task(self._connect_until_connected()))

    @property
    def connected(self) -> bool:
        """Connected and not closing: what is published once ``close`` has begun goes to
        the spool, not in flight on a connection about to close."""
        return not self._closed and self._nc is not None and self._nc.is_connected

    @property
    def client(self) -> Client | None:
        """The NATS connection, shared for request/reply; None while NATS is unreachable."""
        return self._nc

    async def publish(self, event: Event) -> None:
        """Hand the event to the pipeline; it is acked by JetStream or spooled, never lost
        while the process lives (``flush`` waits for the outcome). ``ValueError`` if it
        cannot be encoded, or is larger than NATS takes. Once ``close`` has begun, it
        returns when the event is stored (``flush``): nothing would store it later, and
        what is left in memory dies with the loop."""
        await self._send(self._item(event))
        if self._closed:
            await self.flush()

    def offer(self, event: Event) -> bool:
        """``publish`` without waiting, on the publisher's loop: False (nothing done) when
        the pipeline is full or closing, and the caller must await ``publish``. A caller
        that does not wait for the outcome (an instrumented call) saves a task per event."""
        if self._full() or self._closed:
            return False  # before encoding: ``publish`` encodes it then
        self._enqueue(self._item(event), spooled=False)
        return True

    def _subject(self, suffix: str, *, by_publisher: bool) -> str:
        publisher = self.config.nats_user if by_publisher else None
        return self.config.topology.event_subject(suffix, publisher=publisher)

    def _item(self, event: Event) -> SpooledEvent:
        subject = self._subject(event.SUBJECT, by_publisher=event.BY_PUBLISHER)
        if subject.lower() in self._forbidden:
            raise PermissionDenied(self._refusal(subject))
        item = SpooledEvent(str(event.event_id), subject, encode(event))
        too_large = self._too_large(item)
        if too_large is not None:
            raise ValueError(f"{type(event).__name__} {too_large}; make its tags smaller")
        return item

    def _too_large(self, item: SpooledEvent) -> str | None:
        """How NATS would refuse ``item`` for its size; None if it would not, or while
        the server's limit is unknown (never connected)."""
        if self._nc is None:
            return None
        size = len(item.payload) + len(item.event_id) + _HEADER_BYTES
        if size <= self._nc.max_payload:
            return None
        return (
            f"is {size} bytes on the wire, more than the NATS server takes"
            f" ({self._nc.max_payload} bytes, its max_payload)"
        )

    async def flush(self, within: float | None = None) -> None:
        """Wait until every event handed over before this call is acknowledged or spooled
        (an unacknowledged one is spooled after ``ack_timeout``). Events handed over
        meanwhile are not waited for: under a steady load, what is in flight is never
        nothing, and a flush waiting for that never returned.

        At most ``within`` seconds (default ``ack_timeout`` + ``FLUSH_SPOOL_WAIT``): NATS
        refusing or unreachable while the spool fails (an unwritable directory, a full
        disk) would keep events in memory for as long as that lasts. Then ``NotStored``
        says how many events are stored nowhere and why; they stay in memory, offered to
        NATS and the spool again (``close`` writes them to the spool one last time)."""
        if within is None:
            within = self.config.ack_timeout + FLUSH_SPOOL_WAIT
        waiter = _Flush(self._next, asyncio.get_running_loop().create_future())
        if self._flushed(waiter):
            return
        self._flushes.append(waiter)
        try:
            async with asyncio.timeout(within):
                await waiter.done
        except TimeoutError:
            unstored = self._unstored()
            if unstored:
                raise NotStored(self._why_unstored(unstored, within)) from None
            # What is left is the spool's bookkeeping (the removal of events JetStream
            # acknowledged): every event is stored, in the log and still in the spool.
        finally:
            if waiter in self._flushes:
                self._flushes.remove(waiter)

    def _unstored(self) -> int:
        """Events in memory only: in flight from the host (not the spool), or waiting
        for a spool commit."""
        in_flight = sum(not entry.from_spool for entry in self._in_flight.values())
        return in_flight + self._spooling.held

    def _why_unstored(self, unstored: int, within: float) -> str:
        nats = (
            "NATS has not acknowledged them (has `budget migrate` declared its stream?)"
            if self.connected
            else f"NATS at {shown_url(self.config.nats_url)} is unreachable"
        )
        failure = self._spooling.failure
        spool = (
            f"the spool {self.spool.path} fails ({type(failure).__name__}: {failure}): make"
            " its directory (BUDGET_SPOOL_DIR) writable, with room on its disk"
            if failure is not None
            else f"the spool {self.spool.path} has not committed them yet (another process"
            " holds it?)"
        )
        return (
            f"{unstored} events are stored nowhere after {within:g}s: {nats}, and {spool};"
            " they wait in memory, offered to both again (close() spools them one last time)"
        )

    async def resend_spool(self, batch: int = 1000) -> int:
        """Re-send spooled events (same ids, so JetStream or the projections drop any
        that did arrive), batch after batch while each leaves the spool whole. Returns how
        many left it: acknowledged, or moved to its dead letters as too large."""
        if not self.connected:
            return 0
        sent = 0
        while True:
            items = await asyncio.to_thread(self.spool.oldest, batch)
            if not items:
                return sent
            for item in items:
                await self._send(self._readdressed(item), spooled=True)
            await self.flush()
            still = {e.event_id for e in await asyncio.to_thread(self.spool.oldest, batch)}
            acked = [e for e in items if e.event_id not in still]
            sent += len(acked)
            if len(acked) < len(items) or not self.connected:
                return sent

    def _readdressed(self, item: SpooledEvent) -> SpooledEvent:
        """A spooled usage event goes on this credential's own subject, whichever it was
        spooled on: one from an earlier release, on the bare subject, or from another NATS
        user would be refused (and dropped) as a host credential may publish on its own
        only."""
        bare = self.config.topology.event_subject(UsageRecorded.SUBJECT)
        own = self._subject(UsageRecorded.SUBJECT, by_publisher=True)
        if item.subject == own or not (item.subject == bare or item.subject.startswith(bare + ".")):
            return item
        return replace(item, subject=own)

    async def close(self) -> None:
        """Wait for the outcome of what was handed over (at most ``ack_timeout`` + 1 s),
        spool the rest, and disconnect. Cancelled while it waits (a host's shutdown
        deadline), it still spools the rest: a second ``close`` does nothing, and what it
        left in memory would die with the process."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(NotStored):
                await self.flush(within=self.config.ack_timeout + 1)
        finally:
            await self._shut_down()

    async def _shut_down(self) -> None:
        tasks = [*self._tasks, *([self._writer] if self._writer is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._spooling.stop()
        left, held = self._take_unsent()
        try:
            await self._spooling.write_all(left)
        except Exception as exc:
            _log_lost(held, exc)
        self._settled()  # nothing is left in flight or to spool: every flush returns
        if self._nc is not None:
            await self._nc.close()
        self.spool.close()

    def abandon(self) -> None:
        """Its loop has ended without ``close``: spool what is in memory (the next
        publisher on this spool sends it) and let go of the spool."""
        self.spool_unsent()
        self.spool.close()

    def spool_unsent(self) -> None:
        """Spool what is still in memory, here and now, without the loop (an exiting
        process whose loop has ended). Logs what a failing spool loses."""
        left, held = self._take_unsent()
        try:
            self._spooling.write_now(left)
        except Exception as exc:
            _log_lost(held, exc)

    def _take_unsent(self) -> tuple[list[SpooledEvent], int]:
        """The host's events in flight, out of flight (an acknowledgement arriving later
        finds none); how many events in memory that leaves to be spooled."""
        left = [e.item for e in self._in_flight.values() if not e.from_spool]
        self._in_flight.clear()
        return left, len(left) + self._spooling.held

    async def _connect_until_connected(self) -> None:
        pause = CONNECT_RETRY_FIRST
        while self._nc is None:
            await asyncio.sleep(pause)
            pause = min(pause * 2, CONNECT_RETRY_MAX)
            await self._connect(retrying=True)
        log.info("connected to NATS at %s", shown_url(self.config.nats_url))

    async def _connect(self, *, retrying: bool = False) -> None:
        """Connect, or log why not (at DEBUG when ``retrying``: the first try said it);
        once connected, the spool is re-sent."""
        try:
            self._nc = await connect_nats(
                self.config.nats_url,
                within=self.config.connect_timeout,
                max_reconnect_attempts=-1,
                reconnected_cb=self._on_connected,
                **self.config.nats_options,
            )
        except Exception as exc:
            if retrying:
                log.debug("NATS still unreachable (%s)", exc)
            elif "authorization violation" in str(exc).lower():
                log.error(
                    "NATS at %s refused the credential (user %r); spooling events until"
                    " BUDGET_NATS_USER and BUDGET_NATS_PASSWORD_FILE are right",
                    shown_url(self.config.nats_url),
                    self.config.nats_user,
                )
            else:
                log.warning(
                    "NATS at %s unreachable (%s); spooling events",
                    shown_url(self.config.nats_url),
                    exc,
                )
            self._nc = None
            return
        on_refusal(self._nc, self._on_refused)
        self._inbox = self._nc.new_inbox()
        acks = await self._nc.subscribe(f"{self._inbox}.*")
        raw_handlers(self._nc)[acks._id] = self._on_ack
        for callback in self.on_connect:
            await callback(self._nc)
        await self._on_connected()

    async def _send(self, item: SpooledEvent, *, spooled: bool = False) -> None:
        """Enqueue ``item`` once there is room. While the spool fails, the events in memory
        leave it only if NATS acknowledges them: at once when NATS is unreachable, and
        after ``ack_timeout`` without room when it is connected (refusing them: no stream,
        a full one), ``SpoolFailing`` rather than a wait as long as the fault."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while self._full():
            failure = self._spooling.failure
            if failure is None:
                deadline = None  # the spool works again: room comes
            else:
                if deadline is None:
                    deadline = loop.time() + (self.config.ack_timeout if self.connected else 0)
                if loop.time() >= deadline:
                    raise SpoolFailing(self._no_room(failure))
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._room.wait()
        self._enqueue(item, spooled=spooled)

    def _no_room(self, failure: Exception) -> str:
        nats = (
            f"NATS has not taken them for {self.config.ack_timeout:g}s (has `budget migrate`"
            " declared its stream?)"
            if self.connected
            else "NATS is unreachable"
        )
        return (
            f"{nats} and the spool fails ({failure}): {self._unstored()} events wait in"
            " memory; this one is not recorded"
        )

    def _full(self) -> bool:
        """As many events in memory as ``max_in_flight``: in flight or to be spooled."""
        return len(self._in_flight) + self._spooling.held >= self.config.max_in_flight

    def _enqueue(self, item: SpooledEvent, *, spooled: bool) -> None:
        """Into the pipeline (there is room), or the spool while NATS is away."""
        if not self.connected:
            if not spooled:
                self._spooling.put([item])
            return
        self._next += 1
        token = self._next
        self._in_flight[token] = _InFlight(item, time.monotonic(), spooled)
        self._unwritten.append(token)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        """After ``linger``, hand every unwritten event to the client in one go (its
        flusher then writes them in one send), in the order they were handed over: the
        one writer goes on until none is left."""
        try:
            await asyncio.sleep(self.config.linger)
            while self._unwritten:
                tokens, self._unwritten = self._unwritten, []
                for token in tokens:
                    await self._write(token)
        finally:
            self._writer = None

    async def _write(self, token: int) -> None:
        entry = self._in_flight.get(token)
        if entry is None:
            return  # settled meanwhile (expired, refused)
        item = entry.item
        too_large = self._too_large(item)
        if too_large is not None:
            log.error(
                "event %s %s: never sent, kept in the dead_letters table of %s",
                item.event_id,
                too_large,
                self.spool.path,
            )
            self._bury([token], too_large)
            return
        try:
            if self._nc is None:
                raise ConnectionError("not connected")
            await self._nc.publish(
                item.subject,
                item.payload,
                reply=f"{self._inbox}.{token}",
                headers={HEADER_MSG_ID: item.event_id},
            )
        except Exception as exc:
            log.warning("publish failed (%s); spooling", exc)
            self._settle(token, acked=False)

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        token = int(subject.rpartition(b".")[2])
        ok = bool(data) and b'"error"' not in data
        if not ok:
            log.warning("JetStream refused an event: %r", data[:300] or headers)
        elif found := _ACK_SEQUENCE.search(data):
            self.stored_up_to = max(self.stored_up_to, int(found[1]))
        self._settle(token, acked=ok)

    def _refusal(self, subject: str) -> str:
        return refusal_message(subject, topology=self.config.topology, user=self.config.nats_user)

    def _on_refused(self, subject: str) -> None:
        """The credential may not publish ``subject``: its events in flight go to the
        spool's dead letters (no re-send would ever be accepted; one spooled by a process
        with another credential, sharing the directory, is kept for a credential that
        may), and later ones are refused at once."""
        self._forbidden.add(subject)
        refused = [t for t, e in self._in_flight.items() if e.item.subject.lower() == subject]
        if refused:
            reason = self._refusal(subject)
            log.error(
                "%d events never sent, kept in the dead_letters table of %s: %s",
                len(refused),
                self.spool.path,
                reason,
            )
            self._bury(refused, f"refused by NATS: {reason}")

    def _bury(self, tokens: list[int], reason: str) -> None:
        """Out of flight, into the spool's dead letters: NATS can never take them."""
        for token in tokens:
            self._spooling.bury(self._in_flight.pop(token).item, reason)
        self._settled()

    def _settle(self, token: int, *, acked: bool) -> None:
        """Out of flight: JetStream has it (``acked``; out of the spool if it came from
        there), or it goes to the spool."""
        entry = self._in_flight.pop(token, None)
        if entry is None:
            return
        if acked and entry.from_spool:
            self._spooling.remove([entry.item.event_id])
        elif not acked and not entry.from_spool:
            self._spooling.put([entry.item])
        self._settled()

    def _settled(self) -> None:
        """Events left memory, or the spool failed: wake who waits for room (to raise if
        nothing can make room), and each flush whose events are all settled."""
        if not self._full() or self._spooling.failure is not None:
            self._room.set()
        if self._flushes:
            done = [f for f in self._flushes if self._flushed(f)]
            for flush in done:
                self._flushes.remove(flush)
                if not flush.done.done():
                    flush.done.set_result(None)

    def _flushed(self, flush: _Flush) -> bool:
        """Whether the events ``flush`` waits for are acknowledged or spooled: none of
        them in flight (tokens grow, so the first in flight is the oldest), then the
        spool's changes handed over by then (the settled events' puts and removals)
        written."""
        if flush.change is None:
            oldest = next(iter(self._in_flight), None)
            if oldest is not None and oldest <= flush.token:
                return False
            flush.change = self._spooling.changes
        return self._spooling.written(flush.change)

    async def _expire_unacked(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.ack_timeout / 2))
            deadline = time.monotonic() - self.config.ack_timeout
            late = [t for t, entry in self._in_flight.items() if entry.sent_at < deadline]
            for token in late:
                self._settle(token, acked=False)
            if late:
                log.warning(
                    "%d events unacknowledged after %ss; spooling them",
                    len(late),
                    self.config.ack_timeout,
                )

    async def _resend_spool_periodically(self) -> None:
        while True:
            await wait_set(self._resend_now, self.config.flush_interval)
            self._resend_now.clear()
            try:
                sent = await self.resend_spool()
            except Exception:
                log.exception("re-sending the spool failed; will retry")
                continue
            if sent:
                # counted in a thread: the read waits for a commit another thread makes
                left = await asyncio.to_thread(len, self.spool)
                log.info("re-sent %d spooled events; %d left", sent, left)

    async def _on_connected(self) -> None:
        """Re-send the spool, and send what waits in memory for a failing spool."""
        self._resend_now.set()
        self._send_what_the_spool_could_not_take()

    def _after_spool_commit(self) -> None:
        # A connection made while a failing commit holds the events takes none back:
        # after each failed commit, they are offered to NATS again.
        if self.connected:
            self._send_what_the_spool_could_not_take()
        self._settled()

    def _send_what_the_spool_could_not_take(self) -> None:
        taken = self._spooling.take_back()
        for item in taken:
            self._enqueue(item, spooled=False)
        if taken:  # handed over before, now in flight again: each flush waits for them
            for flush in self._flushes:
                flush.token, flush.change = self._next, None


def _log_lost(held: int, exc: Exception) -> None:
    log.error(
        "%d events unacknowledged by NATS are lost: the spool fails (%s: %s)",
        held,
        type(exc).__name__,
        exc,
    )
