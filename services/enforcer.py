"""``budget enforcer``: strongly consistent answers for BLOCK and THROTTLE policies.

Checks arrive over NATS request/reply (``<prefix>.rpc.<caller>.enforcer.check``, queue group
``enforcer``, so several enforcers share the load). Each caller is held to its limits
(``services.limits``) and queued on its own; requests waiting while a transaction runs are
decided together in the next one, taken round robin across callers: the windows they touch
are locked, their spend read once, each request judged in that order against what the
ones before it reserved,
and the holds of all admitted requests committed, before any answer is sent. A reply
therefore never promises what the database does not hold.

Holds end when usage reaches the live spend ledger (the spend projection deletes them in
the transaction that counts the cost), on release by the caller that reserved them (or the
services' own credential), or at expiry; a scheduled job removes
expired and settled leftovers. At start the enforcer publishes the ``budget_policies`` of
config.yaml (and the default user policy) that differ from the live ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from budget.config import Settings
from budget.enforcement import assess, decide
from budget.one_line import one_line
from budget.policies import CallScope, PolicyWindow, applicable, configured_policies
from budget.publisher import EventPublisher, PublisherConfig
from events import BudgetPolicy, PolicySet, RequestBlocked, utc_now
from events.envelope import new_event_id
from events.rpc import (
    RPC_CHECK,
    RPC_RELEASE,
    RPC_SNAPSHOT,
    CallAttributes,
    CheckRequest,
    CheckResult,
    PolicySpend,
    ReleaseRequest,
    ReleaseResult,
    RpcError,
    Snapshot,
)
from events.usage import exact_money
from projections.db import connect
from projections.engine.checkpoints import live_position
from projections.engine.metrics import from_zero
from projections.engine.projection import Connection
from projections.policies import PoliciesProjection, load_policies
from projections.windows import window_sums
from services import replies, reservations
from services.fair_queue import FairQueue
from services.limits import CallerLimits, LimitedRequests, asker_waits, services_callers
from services.liveness import Liveness
from services.metrics import CHECK_OUTCOMES, CHECK_SECONDS, CHECKS, RESERVATIONS_OPEN
from services.replies import UNAVAILABLE, Handler, error_reply, send

__all__ = ["Enforcer", "EnforcerConfig", "serve_enforcer"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)
QUEUE_GROUP = "enforcer"
SERVICE = "enforcer"

for _metric in (CHECKS, CHECK_SECONDS, RESERVATIONS_OPEN):
    REGISTRY.register(_metric)  # a process that runs an enforcer exports its metrics


@dataclass(frozen=True, kw_only=True)
class EnforcerConfig:
    reservation_ttl: float = 300.0
    """Seconds a hold lives when the check names no ``ttl_seconds``."""
    reservation_ttl_max: float = 3600.0
    """The longest ``ttl_seconds`` a check is granted; longer asks are capped to it."""
    max_batch: int = 500
    cleanup_interval: float = 10.0
    stall_after: float = 30.0
    """Seconds one batch may take before the decision loop counts as stalled (unhealthy)."""
    drain_within: float = 5.0
    """Seconds a stopping enforcer spends answering the requests it has taken (within
    ``budget up``'s 10 s between SIGTERM and SIGKILL)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> EnforcerConfig:
        ttl = settings.reservation_ttl
        return cls(
            reservation_ttl=ttl,
            reservation_ttl_max=settings.reservation_ttl_max,
            cleanup_interval=min(10.0, ttl / 2),
        )


@dataclass(slots=True)
class _Pending:
    request: CheckRequest
    reply: str
    caller: str
    waits: float | None = None
    """Seconds its asker waits for the answer from sending it (``asker_waits``)."""
    arrived: float = field(default_factory=time.perf_counter)

    def given_up(self) -> bool:
        """Whether its asker has surely stopped waiting: the time it said it waits has
        passed since the request arrived here (later than it was sent)."""
        return self.waits is not None and time.perf_counter() - self.arrived > self.waits


@dataclass(frozen=True, slots=True)
class _Batch:
    """Requests decided together, with the policy windows they matched."""

    pending: list[_Pending]
    now: datetime
    reservation_ids: list[str | None]
    """Decided before judging, so a batch judged twice admits under the same ids."""
    per_call: list[list[PolicyWindow]]
    windows: list[PolicyWindow]


@dataclass
class _Policies:
    position: int = -1
    items: list[BudgetPolicy] = field(default_factory=list)


def _enforced(windows: list[PolicyWindow]) -> list[PolicyWindow]:
    return [w for w in windows if w.policy.action.enforced]


class Enforcer:
    def __init__(
        self,
        settings: Settings,
        nc: Client,
        config: EnforcerConfig | None = None,
        *,
        liveness: Liveness | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or EnforcerConfig.from_settings(settings)
        self.nc = nc
        self.liveness = liveness or Liveness()
        self._decision_loop = self.liveness.loop(
            "enforcer decision loop", stall_after=self.config.stall_after
        )
        self.topology = settings.topology
        self._queue: FairQueue[_Pending] = FairQueue()
        self._limits = CallerLimits.of_enforcer(settings)
        self._services = services_callers(settings)
        self._policies = _Policies()
        self._spent: dict[tuple[str, str, datetime], Decimal] = {}
        """Each window's spend as this enforcer last read or reserved it."""
        self._decider: Connection | None = None
        self._aux: Connection | None = None
        self._aux_lock = asyncio.Lock()
        self._publisher = EventPublisher(
            PublisherConfig.from_settings(
                settings.model_copy(update={"spool_dir": settings.spool_dir / "enforcer"})
            )
        )
        self._scheduler = AsyncIOScheduler()
        self._subscriptions: list[Any] = []
        self._requests: list[LimitedRequests] = []
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from_zero(CHECKS, *((outcome,) for outcome in CHECK_OUTCOMES))
        self._decider = await connect(self.settings.database_url)
        await self._publisher.start()
        await self.publish_configured_policies()
        self._loop_task = self._decision_loop.start(self._decide_forever())
        for name, model, handler in (
            (RPC_CHECK, CheckRequest, None),
            (RPC_RELEASE, ReleaseRequest, self._on_release),
            (RPC_SNAPSHOT, CallAttributes, self._on_snapshot),
        ):
            requests = LimitedRequests(
                self.nc,
                self._limits,
                self.topology,
                service=SERVICE,
                callback=self._on_check if handler is None else self._answering(model, handler),
                # releases and snapshots refused are not checks
                on_refusal=CHECKS.labels("rate_limited").inc if handler is None else None,
            )
            self._requests.append(requests)
            self._subscriptions.append(
                await self.nc.subscribe(
                    self.topology.rpc_wildcard(name), queue=QUEUE_GROUP, cb=requests.on_message
                )
            )
        self._scheduler.add_job(
            self.release_finished, "interval", seconds=self.config.cleanup_interval
        )
        self._scheduler.start()
        await self.nc.flush()
        log.info("enforcer answering on %s", self.topology.rpc_wildcard("enforcer.*"))

    async def stop(self) -> None:
        """Stop taking requests, answer the ones taken (the batch being decided and those
        waiting for it, within ``drain_within`` seconds), then stop: a check in flight at
        a deploy or a rolling restart is answered, not left to time out and fail closed
        with its hold counting against the limit, unheard, until it expires."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.drain_within):
                await self._answer_taken()
        for sub in self._subscriptions:
            with contextlib.suppress(Exception):  # drained already, or NATS is gone
                await sub.unsubscribe()
        for requests in self._requests:
            await requests.close()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._publisher.close()
        for conn in (self._decider, self._aux):
            if conn is not None:
                await conn.close()

    async def _answer_taken(self) -> None:
        """Stop the subscriptions, handing on what they had received (NATS then sends new
        requests to the other enforcers, or answers "no responders"), and wait until every
        request handed on has been answered."""
        drains = [sub.drain() for sub in self._subscriptions]
        await asyncio.gather(*drains, return_exceptions=True)  # NATS gone: nothing to drain
        for requests in self._requests:
            await requests.handled()
        await self._queue.join()

    # -- requests ----------------------------------------------------------------------------

    def _answering(
        self, model: type[CheckRequest | ReleaseRequest | CallAttributes], handler: Handler
    ) -> Callable[[Msg, str], Awaitable[bool]]:
        async def answered_now(msg: Msg, _: str) -> bool:
            await replies.answer(
                self.nc, msg, model, handler, service=SERVICE, liveness=self.liveness
            )
            return False

        return answered_now

    async def _on_check(self, msg: Msg, caller: str) -> bool:
        """Queued for the decision loop, which answers (and counts the check); True once
        queued. One answered here at once (not a CheckRequest, or the enforcer is not
        healthy) is counted here."""

        async def enqueue(request: CheckRequest, msg: Msg) -> None:
            self._queue.put(caller, _Pending(request, msg.reply, caller, asker_waits(msg)))

        answered = await replies.answer(
            self.nc, msg, CheckRequest, enqueue, service=SERVICE, liveness=self.liveness
        )
        if answered != "handled":
            CHECKS.labels("invalid" if answered == "invalid" else "error").inc()
        return answered == "handled"

    async def _on_aux(self, work: Callable[[Connection], Awaitable[_T]]) -> _T:
        """``work`` on the connection for everything but decisions (snapshots, releases,
        cleanup), one user at a time; once more on a new connection when that one turns
        out lost (a PostgreSQL restart, which ``budget up`` makes when it dies), rather than
        answer "database unavailable" with the database back. Every such work is safe to
        repeat: reads, and deletes of holds."""
        async with self._aux_lock:
            try:
                return await work(await self._aux_connected())
            except UNAVAILABLE:
                if self._aux is not None and not (self._aux.closed or self._aux.broken):
                    raise  # the connection works: the database refused the work
            return await work(await self._aux_connected())

    async def _aux_connected(self) -> Connection:
        """The connection for everything but decisions, connected anew when lost."""
        if self._aux is None or self._aux.closed or self._aux.broken:
            if self._aux is not None:
                with contextlib.suppress(Exception):
                    await self._aux.close()
                self._aux = None
            self._aux = await connect(self.settings.database_url)
        return self._aux

    async def _on_release(self, request: ReleaseRequest, msg: Msg) -> ReleaseResult:
        """Only the caller that reserved may release, or the services' own credential."""
        caller = self.topology.caller_of(msg.subject)
        released = await self._on_aux(
            lambda aux: reservations.release(
                aux,
                request.reservation_id,
                caller=caller,
                any_caller=caller in self._services,
            )
        )
        return ReleaseResult(released=released)

    async def _on_snapshot(self, request: CallAttributes, _: Msg) -> Snapshot:
        now = utc_now()

        async def read(
            aux: Connection,
        ) -> tuple[list[BudgetPolicy], int, list[PolicyWindow], list[Decimal]]:
            policies = await self._current_policies(aux)
            position = self._policies.position  # of ``policies``, before another await
            windows = applicable(policies, CallScope.of(request), now)
            spend = await window_sums(aux, reservations.SPEND_BUCKETS, windows, holds=True)
            return policies, position, windows, spend

        policies, position, windows, spend = await self._on_aux(read)
        return Snapshot(
            windows=[
                PolicySpend(
                    policy=w.policy, key=w.key, window_start=w.start, window_end=w.end, spent=s
                )
                for w, s in zip(windows, spend, strict=True)
            ],
            as_of=now,
            policies_position=position,
            # A custom range that begins later makes this answer stale then (for any call:
            # which calls it will count is the enforcer's to say at that time).
            changes_at=min(
                (p.custom_start for p in policies if p.custom_start and p.custom_start > now),
                default=None,
            ),
            enforced_anywhere=any(p.action.enforced for p in policies),
        )

    # -- deciding ----------------------------------------------------------------------------

    async def _decide_forever(self) -> None:
        while True:
            batch = [pending for _, pending in await self._queue.take(self.config.max_batch)]
            try:
                with self._decision_loop.turn():
                    await self._decide_and_answer(batch)
            finally:
                self._queue.task_done(len(batch))

    async def _decide_and_answer(self, batch: list[_Pending]) -> None:
        """Answer every request of ``batch``. A request whose handling raises is answered
        with the error (found by deciding the batch's requests one by one), the others
        with their decision; nothing a request holds can stop the loop."""
        try:
            results = await self._decide_connected(batch)
        except UNAVAILABLE as exc:
            error = error_reply(SERVICE, exc)
            for pending in batch:
                await self._send(pending, error)
            await self._reconnect_decider()
            return
        except Exception as exc:
            if len(batch) > 1:
                for pending in batch:
                    await self._decide_and_answer([pending])
            else:
                await self._send(batch[0], error_reply(SERVICE, exc))
            return
        for pending, result in zip(batch, results, strict=True):
            await self._send(pending, result)
        for pending, result in zip(batch, results, strict=True):
            if not result.allowed:
                try:
                    await self._publish_blocked(pending.request, result)
                except Exception:
                    log.exception("enforcer could not publish a RequestBlocked event")

    async def _decide_connected(self, batch: list[_Pending]) -> list[CheckResult]:
        """``decide``, once more on a new connection when the one it used turns out lost
        (PostgreSQL restarted since the last batch: ``budget up`` restarts it when it dies),
        rather than refuse the first calls after the restart with the database back. Only
        a connection lost in the very commit could leave the first try's holds too: they
        expire with their ttl, and meanwhile only over-reserve."""
        try:
            return await self.decide(batch)
        except UNAVAILABLE:
            if self._decider is not None and not (self._decider.broken or self._decider.closed):
                raise  # the connection works: the database refused this batch
        with contextlib.suppress(Exception):
            assert self._decider is not None
            await self._decider.close()
        self._decider = await connect(self.settings.database_url)
        return await self.decide(batch)

    async def _send(self, pending: _Pending, answer: CheckResult | RpcError) -> None:
        self._limits.done(pending.caller)
        CHECKS.labels(_outcome(answer)).inc()
        CHECK_SECONDS.observe(time.perf_counter() - pending.arrived)
        if isinstance(answer, CheckResult) and answer.reservation_id and pending.given_up():
            # Nobody would hear of the reservation (nor settle or release it): it would
            # hold budget until it expired.
            await self._release_unheard(pending, answer.reservation_id)
            return
        try:
            await send(self.nc, pending.reply, answer)
        except Exception as exc:  # the asker hears nothing and times out; the loop goes on
            log.warning("enforcer could not send an answer: %s", exc)

    async def _release_unheard(self, pending: _Pending, reservation_id: str) -> None:
        """Release what was reserved for a request whose asker stopped waiting before its
        answer was ready (the answer is not sent: it would admit a call holding nothing)."""
        log.warning(
            "enforcer: caller %r stopped waiting (%.3fs) before its check was decided;"
            " reservation %s released",
            pending.caller,
            pending.waits,
            reservation_id,
        )
        try:
            await self._on_aux(
                lambda aux: reservations.release(aux, reservation_id, caller=pending.caller)
            )
        except (psycopg.Error, OSError) as exc:
            log.warning(
                "enforcer could not release reservation %s (%s); it expires", reservation_id, exc
            )

    async def decide(self, pending: list[_Pending]) -> list[CheckResult]:
        """Judge ``pending``; holds of admitted requests are committed when this returns.

        Optimistic first: judged against the spend this enforcer last saw, the holds are
        inserted in one round trip if no window's spend has grown since (``reserve``).
        Otherwise, in a transaction: lock the windows and read their spend, judge, insert
        the holds and commit."""
        assert self._decider is not None
        conn, now = self._decider, utc_now()
        ids = [str(new_event_id()) if p.request.reserve else None for p in pending]
        batch = self._match(pending, now, ids)
        seen = [self._spent.get(w.ident) for w in batch.windows]
        answer = None
        if self._policies.position >= 0 and None not in seen:
            judged = [amount for amount in seen if amount is not None]
            results, holds = self._judge(batch, judged)
            answer = await reservations.reserve(
                conn,
                lock=_enforced(batch.windows),
                windows=batch.windows,
                judged=judged,
                exact=not all(r.allowed for r in results),
                policies_seen=self._policies.position,
                holds=holds,
            )
        if answer is not None and answer.reserved:
            # Judged again on the spend read under the locks: the same admissions (it was no
            # higher, and equal if any was refused), reported with current figures.
            results, holds = self._judge(batch, answer.spent)
        else:
            async with conn.transaction():
                while True:
                    answer = await reservations.reserve(
                        conn,
                        lock=_enforced(batch.windows),
                        windows=batch.windows,
                        judged=None,
                        exact=True,
                        policies_seen=self._policies.position,
                        holds=[],
                    )
                    if answer.policies_position == self._policies.position:
                        break
                    policies = await load_policies(conn)
                    self._policies = _Policies(answer.policies_position, policies)
                    batch = self._match(pending, now, ids)
                results, holds = self._judge(batch, answer.spent)
                await reservations.insert_holds(conn, holds)
        self._remember(batch.windows, answer.spent, holds)
        return results

    def _match(self, pending: list[_Pending], now: datetime, ids: list[str | None]) -> _Batch:
        """Each request's windows under the cached policies, and all of them once."""
        per_call = [applicable(self._policies.items, CallScope.of(p.request), now) for p in pending]
        windows = list({w.ident: w for ws in per_call for w in ws}.values())
        return _Batch(pending, now, ids, per_call, windows)

    def _judge(
        self, batch: _Batch, spent: list[Decimal]
    ) -> tuple[list[CheckResult], list[reservations.Hold]]:
        """Every request in the batch's order, against what the ones before it reserved."""
        spend = {w.ident: amount for w, amount in zip(batch.windows, spent, strict=True)}
        results, holds = [], []
        now = batch.now
        for pending, call_windows, planned_id in zip(
            batch.pending, batch.per_call, batch.reservation_ids, strict=True
        ):
            estimate = pending.request.estimated_cost
            statuses = [assess(w, spend[w.ident], estimate, now) for w in call_windows]
            enforced = _enforced(call_windows)
            reservation_id = planned_id if enforced else None
            result = decide(statuses, estimate, enforced=True, reservation_id=reservation_id)
            if result.allowed and reservation_id is not None:
                expires = now + timedelta(seconds=self._ttl(pending.request))
                for w in enforced:
                    with exact_money():
                        spend[w.ident] += estimate
                    holds.append(
                        reservations.Hold(reservation_id, w, estimate, expires, pending.caller)
                    )
            results.append(result)
        return results, holds

    def _ttl(self, request: CheckRequest) -> float:
        """The hold's lifetime: what the check asks, up to the configured maximum."""
        if request.ttl_seconds is None:
            return self.config.reservation_ttl
        return min(request.ttl_seconds, self.config.reservation_ttl_max)

    def _remember(
        self, windows: list[PolicyWindow], spent: list[Decimal], holds: list[reservations.Hold]
    ) -> None:
        """What each window holds now, to judge the next requests on."""
        if len(self._spent) > 100_000:
            self._spent.clear()
        self._spent.update({w.ident: amount for w, amount in zip(windows, spent, strict=True)})
        with exact_money():
            for hold in holds:
                self._spent[hold.window.ident] += hold.amount

    async def _current_policies(self, conn: Connection) -> list[BudgetPolicy]:
        position = await live_position(conn, PoliciesProjection.name)
        if position != self._policies.position:
            self._policies = _Policies(position, await load_policies(conn))
        return self._policies.items

    async def _reconnect_decider(self) -> None:
        with contextlib.suppress(Exception):
            assert self._decider is not None
            await self._decider.close()
        while True:
            try:
                self._decider = await connect(self.settings.database_url)
                return
            except (psycopg.Error, OSError) as exc:
                # Within the decision turn: failing, not stuck (budget up leaves it be)
                self._decision_loop.failing(one_line(f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(1.0)

    async def _publish_blocked(self, request: CheckRequest, result: CheckResult) -> None:
        event = RequestBlocked(
            occurred_at=utc_now(),
            action=result.action or "block",
            policy_ids=result.decided_by,
            reason=result.reason[:500],  # names the policy: a long name must not lose it
            provider=request.provider,
            model=request.model,
            user_id=request.user_id,
            project_id=request.project_id,
            estimated_cost=request.estimated_cost,
            spend=result.current_spend or 0,
            limit_amount=result.limit or 0,
            retry_after_seconds=result.retry_after,
        )
        await self._publisher.publish(event)

    # -- housekeeping ------------------------------------------------------------------------

    async def release_finished(self) -> None:
        async def release(aux: Connection) -> tuple[int, int]:
            finished = await reservations.release_finished(aux)
            RESERVATIONS_OPEN.set(await reservations.open_reservations(aux))
            return finished

        try:
            expired, settled = await self._on_aux(release)
        except psycopg.Error as exc:
            log.warning("releasing finished reservations failed: %s", exc)
            return
        if expired:
            log.info("released %d expired reservation holds", expired)
        if settled:
            log.debug("removed %d settled reservation holds", settled)

    async def publish_configured_policies(self) -> list[BudgetPolicy]:
        """Publish the configured policies that differ from the live ones (idempotent)."""
        live = {p.policy_id: p for p in await self._on_aux(load_policies)}
        changed = [p for p in configured_policies(self.settings) if live.get(p.policy_id) != p]
        for policy in changed:
            await self._publisher.publish(
                PolicySet(occurred_at=utc_now(), policy=policy, set_by="config.yaml")
            )
        await self._publisher.flush()
        if changed:
            log.info("published %d policies from the configuration", len(changed))
        return changed


def _outcome(answer: CheckResult | RpcError) -> str:
    """A check's outcome as a metric label: allowed, the refusing action, or error."""
    if isinstance(answer, RpcError):
        return "error"
    return "allowed" if answer.allowed else answer.action or "block"


async def serve_enforcer(
    nc: Client, settings: Settings, stop: asyncio.Event, liveness: Liveness
) -> None:
    """Run an enforcer on ``nc`` until ``stop``, its loop reported to ``liveness``."""
    enforcer = Enforcer(settings, nc, liveness=liveness)
    try:
        await enforcer.start()
        await stop.wait()
    finally:
        await enforcer.stop()
