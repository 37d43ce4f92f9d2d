"""What the public API reads, and the one way host apps read it: over NATS.

``Queries`` is the read side that ``BudgetManager``, ``AlertEngine`` and
``ReportGenerator`` use. Host apps get ``RpcQueries``: request/reply to the query service
(``budget query-service``), so they never hold database credentials. The CLI and the
query service itself use the database implementation in ``services.db_queries``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from nats.aio.client import Client
from pydantic import BaseModel, ValidationError

from budget.config import Settings
from budget.report_format import Report, Table, from_answer, history_cut_note
from budget.rpc import RetryTimes, ServiceUnavailable, Unanswered, ask
from events import AlertRule, BudgetPolicy, BudgetScope
from events.queries import (
    MAX_POSITION_WAIT,
    QUERY_ALERTS,
    QUERY_DELIVERIES,
    QUERY_POLICIES,
    QUERY_POSITION,
    QUERY_REPORT,
    QUERY_RULES,
    QUERY_SPEND,
    AlertDelivery,
    AlertsAnswer,
    AlertsQuery,
    DeliveriesAnswer,
    DeliveriesQuery,
    HistoryMark,
    PoliciesAnswer,
    PoliciesQuery,
    PositionAnswer,
    PositionQuery,
    ReportAnswer,
    ReportQuery,
    RulesAnswer,
    RulesQuery,
    SpendAnswer,
    SpendKey,
    SpendQuery,
    SpendRow,
    StoredAlert,
    spend_order,
)

__all__ = ["NotApplied", "Queries", "RpcQueries", "not_applied", "question"]

M = TypeVar("M", bound=BaseModel)


def question(model: type[M], arguments: Mapping[str, str], /, **fields: Any) -> M:
    """The query ``model`` of ``fields``, or a ``ValueError`` of one line naming the caller's
    argument (``arguments``: its name for a field, where they differ) and what is wrong,
    where the query model's error is pydantic's, several lines and a link."""
    try:
        return model(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else model.__name__
        why = error["msg"].removeprefix("Value error, ")
        if error["type"] == "timezone_aware":
            why += " (a datetime with tzinfo, e.g. datetime(2026, 11, 1, tzinfo=UTC))"
        raise ValueError(f"{arguments.get(field, field)}: {why}") from None


class NotApplied(TimeoutError):
    """The change is on the log but its projection's worker has not applied it yet."""


def not_applied(projection: str, seq: int, within: float) -> NotApplied:
    return NotApplied(
        f"the change is stored (stream sequence {seq}) but the {projection} worker has not"
        f" applied it within {within:.0f}s; is `budget worker {projection}` (or `budget up`)"
        " running?"
    )


class Queries(Protocol):
    async def policies(self, scope: BudgetScope | None = None) -> list[BudgetPolicy]: ...

    async def spend(self, query: SpendQuery) -> list[SpendRow]: ...

    async def rules(self) -> list[AlertRule]: ...

    async def alerts(self, query: AlertsQuery) -> list[StoredAlert]: ...

    async def deliveries(self, alert_id: uuid.UUID) -> list[AlertDelivery]: ...

    async def report(self, query: ReportQuery) -> Report: ...

    async def wait_applied(self, projection: str, seq: int, within: float) -> None:
        """Return once ``projection``'s live version has applied stream sequence ``seq``;
        raise ``NotApplied`` after ``within`` seconds."""


class RpcQueries:
    """``Queries`` answered by the query service; ``client`` gives the NATS connection
    (the usage tracker's, so a host app keeps one)."""

    def __init__(self, settings: Settings, client: Callable[[], Client | None]) -> None:
        self.settings = settings
        self._client = client
        self._retry_times = RetryTimes()

    async def policies(self, scope: BudgetScope | None = None) -> list[BudgetPolicy]:
        answer = await self._ask(QUERY_POLICIES, PoliciesQuery(scope=scope), PoliciesAnswer)
        return answer.policies

    async def spend(self, query: SpendQuery) -> list[SpendRow]:
        """Every row, asked for part after part when they do not fit in one NATS message
        (1 MiB by default: some thousands of scope keys), then put in the answer's order."""
        answer = await self._ask(QUERY_SPEND, query, SpendAnswer)
        if not answer.more:
            return answer.rows
        rows = list(answer.rows)
        while answer.more:
            after = SpendKey(scope=rows[-1].scope, scope_key=rows[-1].scope_key)
            answer = await self._ask(
                QUERY_SPEND, query.model_copy(update={"after": after}), SpendAnswer
            )
            rows += answer.rows
        return sorted(rows, key=spend_order)

    async def rules(self) -> list[AlertRule]:
        return (await self._ask(QUERY_RULES, RulesQuery(), RulesAnswer)).rules

    async def alerts(self, query: AlertsQuery) -> list[StoredAlert]:
        return (await self._ask(QUERY_ALERTS, query, AlertsAnswer)).alerts

    async def deliveries(self, alert_id: uuid.UUID) -> list[AlertDelivery]:
        query = DeliveriesQuery(alert_id=alert_id)
        return (await self._ask(QUERY_DELIVERIES, query, DeliveriesAnswer)).deliveries

    async def report(self, query: ReportQuery) -> Report:
        answer = await self._ask(QUERY_REPORT, query, ReportAnswer)
        return from_answer(answer) if not answer.more else await self._history(query, answer)

    async def _history(self, query: ReportQuery, first: ReportAnswer) -> Report:
        """The usage history ``first`` began, asked for part after part: one answer carries
        what fits in one NATS message (1 MiB by default: some thousands of calls)."""
        parts = [from_answer(first)]
        answer, shown, asked = first, len(parts[0].main.rows), query.limit
        while answer.more and shown < query.limit:
            calls = parts[-1].main.records()[-1]
            after = HistoryMark(occurred_at=calls["occurred_at"], event_id=calls["event_id"])
            asked = query.limit - shown
            part = query.model_copy(update={"limit": asked, "after": after})
            answer = await self._ask(QUERY_REPORT, part, ReportAnswer)
            parts.append(from_answer(answer))
            shown += len(parts[-1].main.rows)
        last = parts[-1]
        # the last part's note that it was cut at what was left to show: of the whole limit
        notes = [
            history_cut_note(query.limit) if n == history_cut_note(asked) else n for n in last.notes
        ]
        rows = [row for part in parts for row in part.main.rows]
        table = Table(last.main.title, last.main.columns, rows)
        return Report(last.title, last.start, last.end, [table], notes)

    async def wait_applied(self, projection: str, seq: int, within: float) -> None:
        wait = min(within, MAX_POSITION_WAIT)
        query = PositionQuery(projection=projection, at_least=seq, wait_seconds=wait)
        answer = await self._ask(QUERY_POSITION, query, PositionAnswer, extra=wait)
        if answer.position < seq:
            raise not_applied(projection, seq, within)

    async def _ask(self, name: str, query: BaseModel, answer: type[M], *, extra: float = 0) -> M:
        subject = self.settings.topology.rpc_subject(name, caller=self.settings.caller)
        try:
            return await ask(
                self._client(),
                subject,
                query,
                answer,
                within=self.settings.query_timeout + extra,
                await_responder=True,
                retry_times=self._retry_times,
            )
        except ServiceUnavailable:
            raise  # it runs, and says why it cannot answer
        except Unanswered as exc:
            raise Unanswered(
                f"the query service did not answer ({exc}); start `budget query-service`"
                " (or `budget up`)"
            ) from None
