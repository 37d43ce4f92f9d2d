"""``budget query-service``: answers the public API's questions from the projections.

Host apps never hold the database's credentials: ``BudgetManager``, ``AlertEngine`` and
``ReportGenerator`` ask over NATS request/reply (``<prefix>.rpc.<caller>.query.*``, queue group
``query``, so replicas share the load), and this service reads PostgreSQL. Each request
runs as its own task, so a slow report or a wait for a change to apply holds up nothing
else; at most ``connections`` run in the database at once, and at most half of them for
one caller (the services' own callers aside), so one host's slow reports leave the others
connections to be answered on. Each caller is held to its limits (``services.limits``):
past them a request is refused at once, unread. A probe asks the database something
trivial every few seconds, so the service's health check says when it cannot reach it
(and, once that has lasted ``stall_after``, questions are refused at once, saying why,
rather than each failing on its own); so it does when the loop taking one kind of
question died or is stuck (``services.liveness``). A question is worked on only as long as its asker
waits for the answer (``Budget-Time-Left``, at most ``MAX_ANSWER_SECONDS``): just before
that its query is cancelled in the database, its connection serves the next one, and the
asker is told the question took longer than it waits. Stopping, it takes no more
questions and answers those it has taken (``drain_within`` seconds at most; one still
running then is told the service stopped), so a deploy or a rolling restart leaves no
asker waiting out its ``query_timeout`` for an answer that never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, TypeAdapter

from budget.config import Settings
from budget.redaction import redact
from budget.report_format import history_cut_note, to_answer
from events.queries import (
    ANY_QUERY,
    QUERY_ALERTS,
    QUERY_DELIVERIES,
    QUERY_POLICIES,
    QUERY_POSITION,
    QUERY_REPORT,
    QUERY_RULES,
    QUERY_SPEND,
    AlertsAnswer,
    AlertsQuery,
    DeliveriesAnswer,
    DeliveriesQuery,
    PoliciesAnswer,
    PoliciesQuery,
    PositionAnswer,
    PositionQuery,
    ReportAnswer,
    ReportQuery,
    RulesAnswer,
    RulesQuery,
    SpendAnswer,
    SpendQuery,
)
from events.rpc import RpcError
from projections.database_queries import DatabaseQueries, asking
from projections.db import connect
from projections.engine.projection import Connection
from services.limits import CallerLimits, LimitedRequests, asker_waits
from services.liveness import Liveness, Loop
from services.metrics import QUERY_SECONDS
from services.replies import answer, send

__all__ = ["MAX_ANSWER_SECONDS", "QueryService", "serve_query_service"]

log = logging.getLogger(__name__)
QUEUE_GROUP = "query"
SERVICE = "query service"
PROBE_EVERY = 5.0
"""Seconds between two probes of the database."""
_PROBE_TIMEOUT = 10
"""Seconds a probe may take to connect, or to be answered."""
DATABASE_STALL_AFTER = 30.0
"""Seconds the database may stay unreachable (or a probe may take) before the service
counts as unhealthy."""
MAX_ANSWER_SECONDS = 120.0
"""Seconds a question is worked on at most, however long its asker says it waits (or when
it does not say): the longest an asker of this product waits is ``query_timeout`` (30 s)
plus a wait for a change to apply (``MAX_POSITION_WAIT``, 60 s)."""
DRAIN_WITHIN = 5.0
"""Seconds a stopping service spends answering the questions it has taken (within
``budget up``'s 10 s between SIGTERM and SIGKILL)."""
_STOPPED = RpcError(
    error=f"{SERVICE}: stopped before this question was answered; ask again (another"
    " query service, or this one once restarted, answers it)",
    unavailable=True,
)
"""The answer of a question still being worked on when a stopping service stops."""
_ANSWER_MARGIN = 0.05
"""Seconds, and the share of its time, a question's work stops before its asker gives up,
so that the asker gets the error saying why."""

Handler = Callable[[Any], Awaitable[BaseModel]]


class QueryService:
    def __init__(
        self,
        settings: Settings,
        nc: Client,
        *,
        connections: int = 4,
        liveness: Liveness | None = None,
        probe_every: float = PROBE_EVERY,
        stall_after: float = DATABASE_STALL_AFTER,
        drain_within: float = DRAIN_WITHIN,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.liveness = liveness or Liveness()
        self._probe_every = probe_every
        self._stall_after = stall_after
        self._drain_within = drain_within
        self._probe: asyncio.Task[None] | None = None
        self.queries = DatabaseQueries(
            settings.database_url, connections=connections, per_caller=max(1, connections // 2)
        )
        self._subscriptions: list[Any] = []
        self._requests: list[LimitedRequests] = []
        self._running: set[asyncio.Task[object]] = set()
        self._limits = CallerLimits.of_query_service(settings)

    async def start(self) -> None:
        database = self.liveness.loop(f"{SERVICE} database", stall_after=self._stall_after)
        self._probe = database.start(self._probe_database(database))
        routes: dict[str, tuple[type[BaseModel], Handler]] = {
            QUERY_POLICIES: (PoliciesQuery, self._policies),
            QUERY_SPEND: (SpendQuery, self._spend),
            QUERY_RULES: (RulesQuery, self._rules),
            QUERY_ALERTS: (AlertsQuery, self._alerts),
            QUERY_DELIVERIES: (DeliveriesQuery, self._deliveries),
            QUERY_REPORT: (ReportQuery, self._report),
            QUERY_POSITION: (PositionQuery, self._position),
        }
        for name, (model, handler) in routes.items():
            subject = self.settings.topology.rpc_wildcard(name)
            requests = self._limited(name, model, handler)
            self._requests.append(requests)
            self._subscriptions.append(
                await self.nc.subscribe(subject, queue=QUEUE_GROUP, cb=requests.on_message)
            )
        await self.nc.flush()
        log.info("query service answering on %s", self.settings.topology.rpc_wildcard(ANY_QUERY))

    async def stop(self) -> None:
        """Stop taking questions, answer the ones taken (within ``drain_within`` seconds;
        those still running then are told the service stopped), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._drain_within):
                await self._answer_taken()
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        for sub in self._subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for requests in self._requests:
            await requests.close()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self.queries.close()

    async def _answer_taken(self) -> None:
        """Stop the subscriptions, handing on what they had received (NATS then sends new
        questions to the other query services, or answers "no responders"), and wait
        until every question handed on has been answered."""
        drains = [sub.drain() for sub in self._subscriptions]
        await asyncio.gather(*drains, return_exceptions=True)  # NATS gone: nothing to drain
        for requests in self._requests:
            await requests.handled()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _probe_database(self, loop: Loop) -> None:
        """On a connection of its own: questions holding every connection of the pool
        (slow reports) are no sign of the database being away."""
        conn: Connection | None = None
        try:
            while True:
                try:
                    with loop.turn():
                        if conn is None or conn.closed or conn.broken:
                            conn = await connect(
                                self.settings.database_url,
                                application_name="budget query service probe",
                                connect_timeout=_PROBE_TIMEOUT,
                                options=f"-c statement_timeout={_PROBE_TIMEOUT}s",
                            )
                        await conn.execute("SELECT 1")
                except (psycopg.Error, OSError) as exc:
                    loop.failing(f"database unavailable: {redact(str(exc))}")
                await asyncio.sleep(self._probe_every)
        finally:
            if conn is not None:
                await conn.close()

    def _limited(self, name: str, model: type[BaseModel], handler: Handler) -> LimitedRequests:
        seconds = QUERY_SECONDS.labels(name.removeprefix("query."))

        async def run(query: BaseModel, msg: Msg) -> BaseModel:
            allowed = _time_allowed(msg)
            with seconds.time():
                try:
                    async with asyncio.timeout(allowed) as deadline:
                        return await handler(query)
                except TimeoutError:
                    if not deadline.expired():
                        raise
            # The asker is about to give up: the work would only hold a connection, and
            # the asker is better told why than left to take the service for down.
            log.info("%s: %s stopped after %.1fs, its asker's time", SERVICE, name, allowed)
            return RpcError(
                error=f"{SERVICE}: {name} took longer than its asker waits ({allowed:.1f}s"
                " used); ask for less (a shorter window, a filter) or wait longer"
                " (query_timeout)"
            )

        async def answered(msg: Msg, caller: str) -> None:
            if caller not in self._limits.exempt:  # their reads count against its share
                asking.set(caller)
            try:
                await answer(self.nc, msg, model, run, service=SERVICE, liveness=self.liveness)
            except asyncio.CancelledError:  # the service stops: the asker need not wait
                with contextlib.suppress(Exception):  # NATS gone: it times out
                    await send(self.nc, msg.reply, _STOPPED)
                raise

        async def on_message(msg: Msg, caller: str) -> bool:
            task = asyncio.create_task(answered(msg, caller))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda _: self._limits.done(caller))
            return True

        return LimitedRequests(
            self.nc,
            self._limits,
            self.settings.topology,
            service=SERVICE,
            callback=on_message,
            liveness=self.liveness,
            name=name,
        )

    async def _policies(self, query: PoliciesQuery) -> PoliciesAnswer:
        return PoliciesAnswer(policies=await self.queries.policies(query.scope))

    async def _spend(self, query: SpendQuery) -> SpendAnswer:
        """Every row, or, if they do not fit in one NATS message (thousands of users), the
        first that fit by scope and key, with ``more``: the asker asks for the rest."""
        answer = SpendAnswer(rows=await self.queries.spend(query))
        if len(_json(answer)) <= self.nc.max_payload:
            return answer
        rows = sorted(answer.rows, key=lambda r: (r.scope, r.scope_key))
        sizes = [len(_json(row)) + 1 for row in rows]
        kept = _fitting(sizes, self.nc.max_payload - len(_json(SpendAnswer(rows=[], more=True))))
        return SpendAnswer(rows=rows[:kept], more=True) if kept else answer

    async def _rules(self, _: RulesQuery) -> RulesAnswer:
        return RulesAnswer(rules=await self.queries.rules())

    async def _alerts(self, query: AlertsQuery) -> AlertsAnswer:
        return AlertsAnswer(alerts=await self.queries.alerts(query))

    async def _deliveries(self, query: DeliveriesQuery) -> DeliveriesAnswer:
        return DeliveriesAnswer(deliveries=await self.queries.deliveries(query.alert_id))

    async def _report(self, query: ReportQuery) -> ReportAnswer:
        answer = to_answer(await self.queries.report(query))
        return _fitted(answer, query, self.nc.max_payload) if query.kind == "history" else answer

    async def _position(self, query: PositionQuery) -> PositionAnswer:
        position = await self.queries.position(query.projection, query.at_least, query.wait_seconds)
        return PositionAnswer(position=position)


_ROW = TypeAdapter(list[str | int | None])
"""A report row as its answer's JSON writes it."""


def _fitted(answer: ReportAnswer, query: ReportQuery, most: int) -> ReportAnswer:
    """The usage history ``answer``, cut to the calls whose JSON fits in ``most`` bytes
    (NATS's max_payload) with ``more`` set if they do not all fit: the asker asks for the
    rest after its last row. A limit's note goes with the calls it was about."""
    [calls] = answer.tables
    if len(_json(answer)) <= most:
        return answer
    notes = [n for n in answer.notes if n != history_cut_note(query.limit)]
    cut = answer.model_copy(
        update={"tables": [calls.model_copy(update={"rows": []})], "notes": notes, "more": True}
    )
    kept = _fitting([len(_ROW.dump_json(row)) + 1 for row in calls.rows], most - len(_json(cut)))
    if kept == 0:
        return answer
    return cut.model_copy(update={"tables": [calls.model_copy(update={"rows": calls.rows[:kept]})]})


def _fitting(sizes: list[int], room: int) -> int:
    """How many of the first items of ``sizes`` (bytes, a comma each included) fit in
    ``room`` bytes; none fitting, the answer is sent whole and refused for its size, so
    the asker is told rather than asking for a next part forever."""
    kept = 0
    while kept < len(sizes) and sizes[kept] <= room:
        room -= sizes[kept]
        kept += 1
    return kept


def _json(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()


def _time_allowed(msg: Msg) -> float:
    """Seconds ``msg``'s question may be worked on: as long as its asker waits, when it says
    (``Budget-Time-Left``), less a margin for the answer's way back; at most
    ``MAX_ANSWER_SECONDS``."""
    waits = asker_waits(msg)
    if waits is None:
        return MAX_ANSWER_SECONDS
    return min(max(waits * (1 - _ANSWER_MARGIN) - _ANSWER_MARGIN, 0.0), MAX_ANSWER_SECONDS)


async def serve_query_service(
    nc: Client, settings: Settings, stop: asyncio.Event, liveness: Liveness
) -> None:
    """Run a query service on ``nc`` until ``stop``."""
    service = QueryService(settings, nc, liveness=liveness)
    try:
        await service.start()
        await stop.wait()
    finally:
        await service.stop()
