"""The five reports (summary, trend, comparison, projection and custom), read from the
report materializer's rollups (never from raw events; a report by tag, which has no
rollup, and the history read the usage history's row per call).
``budget.ReportGenerator`` asks for them over NATS; the query service and the CLI build
them here.

Windows are exact to the quarter hour: each is read as whole UTC days from the daily
rollups, plus or minus the quarter hours between its ends and the nearest UTC midnights
(``span_pieces``), every range an index scan on (dimension, period_start). A window
that does not start or end on a quarter hour is widened to whole quarter hours, and the
report says so. Reports that count calendar days,
weeks or months (summary, trend, projection) count them in the query's time zone (``tz``,
an IANA name; UTC by default): each local day is [local midnight, next local midnight),
23 or 25 hours across a DST change, and every zone's midnight falls on a quarter hour.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import NamedTuple
from zoneinfo import ZoneInfo

from budget.forecast import (
    METHOD,
    DayForecast,
    forecast,
    one_off_spikes,
    part_of_day,
    total_interval,
)
from budget.percentages import percent_of
from budget.periods import Period, local_midnight, period_bounds
from budget.policies import PolicyWindow, policy_window, policy_zone
from budget.report_format import Cell, Report, Table, history_cut_note, shown_money
from budget.reports import GROUPS
from events import BudgetScope, utc_now
from events.policy import GLOBAL_SCOPE_KEY
from events.queries import TAG_GROUP, QueryFieldError, ReportQuery
from events.usage import exact_money
from projections.engine.projection import Connection
from projections.history_pages import HistoryFilter
from projections.policies import load_policies
from projections.readable import readable_position
from projections.spend import MEASURES
from projections.windows import WindowTotals, priced_cost, window_totals

__all__ = [
    "ReportBuilder",
    "Spend",
    "Totals",
    "ceil_quarter",
    "floor_quarter",
    "report_dimension",
    "span_pieces",
]

_MEASURES = (
    "sum(cost)",
    "sum(requests)::bigint",
    "sum(unpriced_requests)::bigint",
    "sum(input_uncached + input_cache_read + input_cache_write)",
    "sum(output_text + output_reasoning)",
)
_TAG_TOTALS = b"""
    SELECT coalesce(tags ->> %s, ''), '', coalesce(sum(cost), 0), count(*),
           count(*) FILTER (WHERE cost IS NULL),
           sum(input_uncached + input_cache_read + input_cache_write),
           sum(output_text + output_reasoning)
    FROM usage_history WHERE occurred_at >= %s AND occurred_at < %s
    GROUP BY 1 ORDER BY 3 DESC, 1"""
"""``totals`` of a tag: tags are free-form (a rollup per tag name would multiply every
call's rollup rows), so they are summed from the usage history's row per call, which
holds each call's tags and current cost (corrections included), over the window's index
range on ``occurred_at``. Calls without the tag (or with it empty) are one group, ""."""
_MEASURE_COLUMNS = ("cost_usd", "requests", "unpriced_requests", "input_tokens", "output_tokens")
_CHANGE_COLUMNS = (
    "current_usd",
    "previous_usd",
    "change_usd",
    "change_percent",
    "current_unpriced_requests",
    "previous_unpriced_requests",
)
_HISTORY_DAYS = 56
_QUARTER = timedelta(minutes=15)
_MICRO = timedelta(microseconds=1)
_MAX_BUDGET_DAYS = 3660
"""How far a budget at this pace is forecast: a custom window can be years long."""
_DAY = timedelta(days=1)
_DST_HOUR = timedelta(hours=1)
"""What local days of a zone may differ by: windows of the same days are not told apart."""
_UNFITTED_BUDGETS = (
    "a budget without a day of its spend before today has no projection at its period's"
    " end (empty): a forecast is fitted on whole days; its spend so far and whether it is"
    " exhausted are shown"
)


class Spend(NamedTuple):
    """The calls of a span: their cost (unpriced ones as 0), how many, how many unpriced."""

    cost: Decimal = Decimal(0)
    requests: int = 0
    unpriced_requests: int = 0

    @property
    def priced_cost(self) -> Decimal | None:
        return priced_cost(*self)

    def plus(self, other: Spend) -> Spend:
        with exact_money():
            return Spend(
                self.cost + other.cost,
                self.requests + other.requests,
                self.unpriced_requests + other.unpriced_requests,
            )


class Totals(NamedTuple):
    key1: str
    key2: str
    cost: Decimal
    requests: int
    unpriced_requests: int
    input_tokens: int
    output_tokens: int

    def keys(self, count: int) -> tuple[str, ...]:
        return (self.key1, self.key2)[:count]

    @property
    def priced_cost(self) -> Decimal | None:
        return priced_cost(self.cost, self.requests, self.unpriced_requests)

    def plus(self, other: Totals) -> Totals:
        """This one's keys, with both's measures summed."""
        with exact_money():
            return self._replace(
                cost=self.cost + other.cost,
                requests=self.requests + other.requests,
                unpriced_requests=self.unpriced_requests + other.unpriced_requests,
                input_tokens=self.input_tokens + other.input_tokens,
                output_tokens=self.output_tokens + other.output_tokens,
            )


def report_dimension(group_by: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The dimension answering ``group_by`` (a rollup dimension, or ``tag:NAME``), and the
    columns its keys fill."""
    tags = [g for g in group_by if g.startswith(TAG_GROUP)]
    if tags:
        if len(set(group_by)) > 1:
            raise QueryFieldError(
                "group_by",
                f"group by one tag alone ({', '.join(dict.fromkeys(group_by))}): a tag is"
                " not crossed with other tags or dimensions",
            )
        if tags[0] == TAG_GROUP:
            raise QueryFieldError("group_by", "name the tag to group by, e.g. tag:team")
        return tags[0], (tags[0],)
    groups = tuple(g for g in GROUPS if g in group_by)
    unknown = set(group_by) - set(GROUPS)
    if unknown:
        raise QueryFieldError(
            "group_by",
            f"cannot group by {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)},"
            f" or a tag: {TAG_GROUP}NAME",
        )
    if not groups:
        return "total", ()
    if groups in (("model",), ("provider", "model")):
        return "model", ("provider", "model")
    if len(groups) == 1:
        return groups[0], groups
    raise QueryFieldError(
        "group_by",
        "group by one of provider, model, user, project, kind (or provider and model);"
        " the rollups do not cross other dimensions",
    )


def _required(value: datetime | None, name: str) -> datetime:
    if value is None:
        raise QueryFieldError(name, f"this report needs {name}")
    return value


def floor_quarter(at: datetime) -> datetime:
    """The start of the rollups' quarter hour holding ``at``, in UTC."""
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


def ceil_quarter(at: datetime) -> datetime:
    floor = floor_quarter(at)
    return floor if floor == at else floor + _QUARTER


def _local_days(first: date, count: int, tz: tzinfo) -> list[datetime]:
    """The ``count + 1`` local midnights (in UTC) that bound ``count`` days from ``first``
    (on quarter hours, as every zone's are since the 1970s; an older odd offset is floored)."""
    return [floor_quarter(local_midnight(first + timedelta(n), tz)) for n in range(count + 1)]


class ReportBuilder:
    """The reports, read over ``conn``; what the query service and the CLI run."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def answer(self, query: ReportQuery) -> Report:
        """The report ``query`` asks for (``ValueError`` when its arguments are wrong;
        ``Rebuilding`` while what it reads, the history or the rollups, is another
        release's, after an upgrade)."""
        tz = ZoneInfo(query.tz)
        await readable_position(self.conn, "history" if query.kind == "history" else "reports")
        if any(g.startswith(TAG_GROUP) for g in query.group_by):
            await readable_position(self.conn, "history")  # tags are read from each call
        if query.kind == "summary":
            return await self.generate_summary_report(query.period, tz)
        if query.kind == "trend":
            return await self.generate_trend_report(query.days, query.interval, tz)
        if query.kind == "projection":
            return await self.generate_projection_report(query.days, tz)
        start, end = _required(query.start, "start"), _required(query.end, "end")
        if query.kind == "custom":
            return await self.generate_report(start, end, query.group_by)
        if query.kind == "history":
            return await self.usage_history(start, end, query)
        return await self.generate_comparison_report(
            start,
            end,
            _required(query.previous_start, "previous_start"),
            _required(query.previous_end, "previous_end"),
            query.group_by,
        )

    # -- the five reports --------------------------------------------------------------------

    async def generate_report(
        self, start_date: datetime, end_date: datetime, group_by: Sequence[str] = ()
    ) -> Report:
        """Totals in [start_date, end_date) grouped by ``group_by`` (empty: one total)."""
        dimension, columns = report_dimension(group_by)
        start, end, notes = self._window(start_date, end_date)
        conn = self.conn
        rows = await self.totals(conn, dimension, start, end)
        table = self._grouped_table("Totals", columns, rows)
        return Report(
            f"Usage report by {', '.join(columns) or 'total'}", start, end, [table], notes
        )

    async def generate_summary_report(
        self, period: str | Period = Period.MONTHLY, tz: tzinfo = UTC
    ) -> Report:
        """The current calendar period (in ``tz``) by provider and model, and the budgets."""
        now = utc_now()
        start, end = period_bounds(Period(period), now, tz)
        conn = self.conn
        # To the period's end, as its budgets and `budget spend` count: a call stamped a
        # few minutes ahead (a host's clock, within max_clock_skew) is the period's too.
        rows = await self.totals(conn, "model", start, end)
        budgets = await self._budgets(conn, now)
        table = self._grouped_table("By provider and model", ("provider", "model"), rows)
        title = f"{Period(period).value.capitalize()} summary"
        return Report(title, *_zoned(start, end, tz), [table, budgets], _zone_note(tz))

    async def generate_trend_report(
        self, days: int = 30, interval: str = "daily", tz: tzinfo = UTC
    ) -> Report:
        """Spend per day (or ISO week from Monday) of ``tz`` over the last ``days`` days,
        today included, with the change from the previous point. Weekly, the first week
        is whole (from its Monday): a part of it would pass for a drop in spend."""
        if interval not in ("daily", "weekly"):
            raise QueryFieldError("interval", f"interval must be daily or weekly, not {interval!r}")
        if days < 1:
            raise QueryFieldError("days", "days must be at least 1")
        today = utc_now().astimezone(tz).date()
        first = today - timedelta(days - 1)
        if interval == "weekly":
            first -= timedelta(first.weekday())
            days = (today - first).days + 1
        series = await self.daily(self.conn, "total", None, first, days, tz)
        points: dict[date, Spend] = {}
        for day in (first + timedelta(n) for n in range(days)):
            key = day - timedelta(day.weekday()) if interval == "weekly" else day
            points[key] = points.get(key, Spend()).plus(series.get(day, Spend()))
        rows: list[tuple[Cell, ...]] = []
        previous: Decimal | None = None
        current = max(points)  # today, or this week: it runs only to now
        for key, point in points.items():
            cost = point.priced_cost  # a point of unpriced calls only: no amount, no change
            with exact_money():
                change = None if previous is None or cost is None else cost - previous
            # part of a day (or week) against a whole one would pass for a drop in spend
            change = None if key == current else change
            rows.append((key, cost, point.requests, point.unpriced_requests, change))
            previous = cost
        table = Table(
            f"{interval.capitalize()} spend",
            ("period_start", "cost_usd", "requests", "unpriced_requests", "change_usd"),
            rows if any(r[2] for r in rows) else [],
        )
        notes = _zone_note(tz)
        if table.rows:
            unit = "day" if interval == "daily" else "week"
            notes.insert(0, f"this {unit} ({current}) so far: no change from a whole {unit}")
        start, end = local_midnight(first, tz), local_midnight(first + timedelta(days), tz)
        return Report(f"Spend trend, last {days} days", *_zoned(start, end, tz), [table], notes)

    async def generate_comparison_report(
        self,
        current_start: datetime,
        current_end: datetime,
        previous_start: datetime,
        previous_end: datetime,
        group_by: Sequence[str] = ("model",),
    ) -> Report:
        """Each group's totals in two windows, with the absolute and percent change (a
        group absent from the previous window has no percent change), and the unpriced
        calls each window's amount leaves out: a window whose calls all lacked a price has
        no amount (None), and then no change either."""
        dimension, columns = report_dimension(group_by)
        now_start, now_end, notes = self._window(current_start, current_end)
        then_start, then_end, then_notes = self._window(previous_start, previous_end)
        conn = self.conn
        current = await self._by_key(conn, dimension, now_start, now_end)
        previous = await self._by_key(conn, dimension, then_start, then_end)
        absent = Totals("", "", Decimal(0), 0, 0, 0, 0)
        changes = [
            (key, current.get(key, absent), previous.get(key, absent))
            for key in current.keys() | previous.keys()
        ]
        with exact_money():  # the biggest change first, then the biggest spend
            changes.sort(key=lambda c: (-abs(c[1].cost - c[2].cost), -c[1].cost, c[0]))
        rows = [
            (*_shown_keys(key[: len(columns)]), *_change(now, then)) for key, now, then in changes
        ]
        table = Table(
            "Change by " + (", ".join(columns) or "total"),
            (*columns, *_CHANGE_COLUMNS),
            rows,
        )
        notes += [f"previous window: {n}" for n in then_notes]
        notes.append(f"previous window {then_start.isoformat()} to {then_end.isoformat()}")
        notes += _lengths_note(now_end - now_start, then_end - then_start)
        return Report("Period comparison", now_start, now_end, [table], notes)

    async def generate_projection_report(
        self, days_to_project: int = 30, tz: tzinfo = UTC
    ) -> Report:
        """Forecast daily spend (days of ``tz``) from today for ``days_to_project`` days
        and at least to the end of the month: per day with its interval, per calendar
        month (each month the days reach, whole: a month's projection never stops part-way
        through it nor runs past its end into the next), and when each budget would be
        exhausted at this pace."""
        if days_to_project < 1:
            raise QueryFieldError("days", "days_to_project must be at least 1")
        now = utc_now()
        today = now.astimezone(tz).date()
        month_first = today.replace(day=1)
        horizon = max(days_to_project, (_next_month(month_first) - today).days)
        # The months' table runs to the end of the last month the days reach.
        last_month = (today + timedelta(horizon - 1)).replace(day=1)
        months_horizon = (_next_month(last_month) - today).days
        start, end = _zoned(
            local_midnight(today, tz), local_midnight(today + timedelta(horizon), tz), tz
        )
        conn = self.conn
        history, unpriced = await self._history(conn, "total", None, today, tz)
        month_actual = await self.daily(
            conn, "total", None, month_first, (today - month_first).days + 1, tz
        )
        budget_rows, budget_notes = await self._budget_forecasts(conn, now)
        days = Table("Daily forecast", ("day", "expected_usd", "low_usd", "high_usd"))
        if not history:
            why = (
                f"no spend on the days before today ({today}): a forecast is fitted on whole"
                " days, so it starts the day after the first call"
            )
            # the budgets still say what is spent, and which is exhausted already
            tables = [days, _months_table([]), budget_rows]
            notes = [why, *budget_notes, *_zone_note(tz)]
            return Report("Spend projection", start, end, tables, notes)
        ahead = forecast(history, months_horizon)
        days.rows.extend((f.day, f.expected, f.low, f.high) for f in ahead[:horizon])
        spent_today = month_actual.get(today, Spend()).cost
        actual = functools.reduce(Spend.plus, month_actual.values(), Spend())
        by_month: dict[date, list[DayForecast]] = {}
        for f in ahead:
            by_month.setdefault(f.day.replace(day=1), []).append(f)
        rows: list[tuple[Cell, ...]] = []
        with exact_money():
            for month, ahead_in_month in by_month.items():
                a = actual.cost if month == month_first else Decimal(0)
                # the actual holds today so far: today adds only what it may still add
                expected = sum(
                    (
                        max(f.expected - spent_today, Decimal(0)) if f.day == today else f.expected
                        for f in ahead_in_month
                    ),
                    Decimal(0),
                )
                # the total's own interval: its days are not all at their extremes at once
                low, high = total_interval(history, [f.day for f in ahead_in_month], expected)
                rows.append(
                    (
                        month,
                        actual.priced_cost if month == month_first else a,
                        actual.unpriced_requests if month == month_first else 0,
                        a + expected,
                        None if low is None else a + low,
                        None if high is None else a + high,
                    )
                )
        return Report(
            "Spend projection",
            start,
            end,
            [days, _months_table(rows), budget_rows],
            [
                f"method: {METHOD}",
                "fitted on the "
                + ("day" if len(history) == 1 else f"{len(history)} days")
                + " before today",
                *_unpriced_note(unpriced),
                *_spikes_note(history),
                *budget_notes,
                *_zone_note(tz),
            ],
        )

    async def usage_history(self, start: datetime, end: datetime, query: ReportQuery) -> Report:
        """Usage events in [start, end) matching ``query``'s filters (as the history's
        ``HistoryFilter``: a provider however it is spelt, a model however it is cased),
        after ``query.after`` if given, oldest first (calls of the same time by event id,
        so that ``after`` resumes exactly): one row per call with its current cost
        (corrections included), or why it has none, and who published it."""
        start, end, notes = self._window(start, end, whole_hours=False)
        keys = HistoryFilter(
            provider=query.provider,
            model=query.model,
            user_id=query.user_id,
            project_id=query.project_id,
            tags=query.tags,
        )
        clauses, filters = keys.key_clauses()
        params = {**filters, "start": start, "end": end, "limit": query.limit + 1}
        if query.after is not None:
            clauses.append("(occurred_at, event_id) > (%(after_at)s, %(after_id)s)")
            params |= {"after_at": query.after.occurred_at, "after_id": query.after.event_id}
        where = "".join(f" AND {clause}" for clause in clauses)
        cursor = await self.conn.execute(
            f"""SELECT occurred_at, provider, model, kind, user_id, project_id,
                       input_uncached + input_cache_read + input_cache_write, input_cache_read,
                       output_text + output_reasoning, cost, unpriced_reason, event_id::text,
                       publisher
                FROM usage_history WHERE occurred_at >= %(start)s AND occurred_at < %(end)s
                {where} ORDER BY occurred_at, event_id LIMIT %(limit)s""".encode(),
            params,
        )
        rows: list[tuple[Cell, ...]] = [tuple(row) for row in await cursor.fetchall()]
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            notes.append(history_cut_note(query.limit))
        notes += [f"{c}: {value}" for c, value in filters.items()]
        columns = (
            "occurred_at",
            "provider",
            "model",
            "kind",
            "user_id",
            "project_id",
            "input_tokens",
            "cached_tokens",
            "output_tokens",
            "cost_usd",
            "unpriced_reason",
            "event_id",
            "publisher",
        )
        return Report("Usage history", start, end, [Table("Calls", columns, rows)], notes)

    # -- reading the rollups -----------------------------------------------------------------

    def _window(
        self, start: datetime, end: datetime, *, whole_hours: bool = True
    ) -> tuple[datetime, datetime, list[str]]:
        for name, value in (("start", start), ("end", end)):
            if value.tzinfo is None:
                raise QueryFieldError(
                    name, f"{name} must have a time zone (UTC is assumed nowhere)"
                )
        if end <= start:
            raise QueryFieldError("end", "the window's end must be after its start")
        if not whole_hours:  # raw events: any precision
            return start, end, []
        wide_start, wide_end = floor_quarter(start), ceil_quarter(end)
        notes = []
        if (wide_start, wide_end) != (start, end):
            notes.append("window widened to whole quarter hours (the rollups' grain)")
        return wide_start, wide_end, notes

    async def totals(
        self, conn: Connection, dimension: str, start: datetime, end: datetime
    ) -> list[Totals]:
        """Totals per key of ``dimension`` (``total``, ``provider``, ``model`` keyed by
        provider and model, ``user``, ``project``, ``kind``; or ``tag:NAME``, keyed by the
        tag's value, "" for calls without it) in [start, end) on quarter hours, dearest
        first."""
        if dimension.startswith(TAG_GROUP):
            cursor = await conn.execute(_TAG_TOTALS, (dimension[len(TAG_GROUP) :], start, end))
        else:
            measures = ", ".join(_MEASURES)
            cursor = await conn.execute(
                # every key with a row in the window made a call there: net zero calls is a
                # key whose rows the signed pieces cancel (see ``span_pieces``)
                f"""SELECT key1, key2, {measures} FROM ({_SPANS}) r
                    GROUP BY key1, key2 HAVING sum(requests) <> 0
                    ORDER BY sum(cost) DESC, key1, key2""".encode(),
                _span_params(dimension, None, [start, end]),
            )
        # token sums are numeric (beyond bigint's range): exact as Python ints
        return [
            Totals(key1, key2, cost, requests, unpriced, int(inputs), int(outputs))
            for key1, key2, cost, requests, unpriced, inputs, outputs in await cursor.fetchall()
        ]

    async def scope_totals(
        self, conn: Connection, scope: BudgetScope, start: datetime, end: datetime
    ) -> list[Totals]:
        """Totals per key of a budget ``scope`` in [start, end) on quarter hours, keyed
        (``key1``) as its policies count spend: ``*`` for all of it, a model across every
        provider that served it, and no empty user or project (a call without one counts
        under none); dearest first."""
        if scope is BudgetScope.GLOBAL:
            total = await self.totals(conn, "total", start, end)
            return [t._replace(key1=GLOBAL_SCOPE_KEY) for t in total]
        totals = await self.totals(conn, scope.value, start, end)
        if scope is BudgetScope.MODEL:
            totals = _per_model(totals)
        return [t for t in totals if t.key1]

    async def spans(
        self, conn: Connection, dimension: str, key: str | None, bounds: Sequence[datetime]
    ) -> list[Spend]:
        """The calls of ``dimension`` (one key, or all; a model by its name alone) in each
        span between consecutive ``bounds`` (ascending, on quarter hours). The key ""
        names no call, as budgets count (an old log's policy of it applies to none): the
        rollups keep calls without a user or project under it."""
        if key == "":
            return [Spend()] * (len(bounds) - 1)
        cursor = await conn.execute(
            f"""SELECT span, sum(cost), sum(requests)::bigint, sum(unpriced_requests)::bigint
                FROM ({_SPANS}) r GROUP BY span""".encode(),
            _span_params(dimension, key, bounds),
        )
        found = {span: Spend(*measures) for span, *measures in await cursor.fetchall()}
        return [found.get(n, Spend()) for n in range(1, len(bounds))]

    async def daily(
        self,
        conn: Connection,
        dimension: str,
        key: str | None,
        first: date,
        days: int,
        tz: tzinfo = UTC,
    ) -> dict[date, Spend]:
        """The calls of each of ``days`` days of ``tz`` from ``first`` that had any."""
        if days < 1:
            return {}
        spans = await self.spans(conn, dimension, key, _local_days(first, days, tz))
        return {first + timedelta(n): s for n, s in enumerate(spans) if s.requests or s.cost}

    async def _by_key(
        self, conn: Connection, dimension: str, start: datetime, end: datetime
    ) -> dict[tuple[str, ...], Totals]:
        return {r.keys(2): r for r in await self.totals(conn, dimension, start, end)}

    async def _history(
        self, conn: Connection, dimension: str, key: str | None, today: date, tz: tzinfo
    ) -> tuple[list[tuple[date, Decimal]], int]:
        """Daily costs (days of ``tz``) before today, from the first whole day with spend
        (at most 56 days), and how many calls in those days had no price (not in the costs).

        The day usage began (its first day with spend after a day read without) is only
        part of one: fitted as a whole day it reads as a drop, and the whole days after it
        as a steep trend. It is left out, unless it is the only day."""
        start = today - timedelta(_HISTORY_DAYS)
        daily = await self.daily(conn, dimension, key, start, _HISTORY_DAYS, tz)
        if not daily:
            return [], 0
        first = min(daily)
        if first > start and (today - first).days > 1:
            first += _DAY
        span = (today - first).days
        unpriced = sum(s.unpriced_requests for day, s in daily.items() if day >= first)
        return [
            (first + timedelta(n), daily.get(first + timedelta(n), Spend()).cost)
            for n in range(span)
        ], unpriced

    def _grouped_table(self, title: str, columns: tuple[str, ...], rows: list[Totals]) -> Table:
        with exact_money():
            total = sum((r.cost for r in rows), Decimal(0))
        shaped: list[tuple[Cell, ...]] = [
            (
                *_shown_keys(r.keys(len(columns))),
                r.priced_cost,
                *r[3:],
                None if r.priced_cost is None else percent_of(r.cost, total),
            )
            for r in rows
        ]
        return Table(title, (*columns, *_MEASURE_COLUMNS, "share_percent"), shaped)

    async def _live_spend(
        self, conn: Connection, now: datetime
    ) -> list[tuple[PolicyWindow, WindowTotals]]:
        """The current window of every policy with one total to compare (global or keyed),
        and the spend and calls in it."""
        windows = []
        for policy in await load_policies(conn):
            if policy.scope is not BudgetScope.GLOBAL and policy.scope_key is None:
                continue  # limits each user separately: see `budget check` and the alerts
            window = policy_window(policy, now)
            if window is not None:
                key = GLOBAL_SCOPE_KEY if policy.scope_key is None else policy.scope_key
                windows.append(PolicyWindow(policy, key, *window))
        spent = await window_totals(conn, "spend_buckets", windows)
        return list(zip(windows, spent, strict=True))

    async def _budgets(self, conn: Connection, now: datetime) -> Table:
        rows: list[tuple[Cell, ...]] = []
        for window, totals in await self._live_spend(conn, now):
            limit = window.policy.limit_amount
            amount = totals.priced_cost
            rows.append(
                (
                    window.policy.name,
                    window.policy.scope.value,
                    window.key,
                    window.start,
                    window.end,
                    amount,
                    limit,
                    None if amount is None else limit - amount,
                    None if amount is None else percent_of(amount, limit),
                    totals.unpriced_requests,
                )
            )
        return Table(
            "Budgets",
            (
                "policy",
                "scope",
                "key",
                "period_start",
                "period_end",
                "spent_usd",
                "limit_usd",
                "remaining_usd",
                "used_percent",
                "unpriced_requests",
            ),
            rows,
        )

    async def _budget_forecasts(self, conn: Connection, now: datetime) -> tuple[Table, list[str]]:
        """Each budget at this pace to its window's end (however far the report's days
        reach), over the days of its own policy's zone, whatever zone the report counts
        in: its window's bounds are their midnights, so its spend today and each day's
        forecast fall inside it or outside it whole. A budget with no day of spend to fit
        has no projection (None, and a note says why), never its spend so far passed off
        as one."""
        rows: list[tuple[Cell, ...]] = []
        unfitted = False
        for window, totals in await self._live_spend(conn, now):
            tz = policy_zone(window.policy)
            today = now.astimezone(tz).date()
            last_day = (window.end - _MICRO).astimezone(tz).date()
            days_left = min((last_day - today).days + 1, _MAX_BUDGET_DAYS)
            amount = totals.cost
            dimension = (
                "total"
                if window.policy.scope is BudgetScope.GLOBAL
                else (window.policy.scope.value)
            )
            key = None if dimension == "total" else window.key
            history, _ = await self._history(conn, dimension, key, today, tz)
            limit = window.policy.limit_amount
            running, exhausted = amount, None
            if amount >= limit:
                exhausted = await self._exhausted_on(conn, window, dimension, key, today, tz)
            # ``amount`` holds today's spend so far: today adds only what it may still add
            # (a window begun today holds nothing of before it).
            if window.start >= local_midnight(today, tz):
                spent_today = amount
            else:
                so_far = await self.daily(conn, dimension, key, today, 1, tz)
                spent_today = so_far.get(today, Spend()).cost
            # to the window's last day: later spend counts against the next one; the exact
            # spend plus the forecast, rounded only where shown
            with exact_money():
                for f in forecast(history, days_left) if history else []:
                    expected = _in_window(f, window, tz)
                    if f.day == today:
                        running += max(expected - spent_today, Decimal(0))
                    else:
                        running += expected
                    if exhausted is None and running >= limit:
                        exhausted = f.day
            unfitted = unfitted or not history
            rows.append(
                (
                    window.policy.name,
                    window.end,
                    totals.priced_cost,
                    running if history else None,
                    limit,
                    exhausted,
                    totals.unpriced_requests,
                )
            )
        return Table(
            "Budgets at this pace",
            (
                "policy",
                "period_end",
                "spent_usd",
                "projected_at_period_end_usd",
                "limit_usd",
                "exhausted_on",
                "unpriced_requests",
            ),
            rows,
        ), [_UNFITTED_BUDGETS] if unfitted else []

    async def _exhausted_on(
        self,
        conn: Connection,
        window: PolicyWindow,
        dimension: str,
        key: str | None,
        today: date,
        tz: tzinfo,
    ) -> date:
        """The day (of ``tz``) a budget spent past its limit by today first reached it:
        the day its spend did, not today (a budget run out days ago read as running out
        today)."""
        first = window.start.astimezone(tz).date()
        midnights = _local_days(first, (today - first).days + 1, tz)
        end = min(midnights[-1], window.end)  # through today, inside the window
        bounds = [window.start, *(m for m in midnights if window.start < m < end), end]
        spent = await self.spans(conn, dimension, key, bounds)  # one span a day from first
        running = Decimal(0)
        with exact_money():
            for day, spend in enumerate(spent):
                running += spend.cost
                if running >= window.policy.limit_amount:
                    return first + timedelta(day)
        return today


def _in_window(day: DayForecast, window: PolicyWindow, tz: tzinfo) -> Decimal:
    """The forecast of ``day`` (of ``tz``) for its part inside ``window``: a custom window
    may start or end at any quarter hour, and its last day's spend after its end is the
    next window's."""
    start, end = local_midnight(day.day, tz), local_midnight(day.day + _DAY, tz)
    inside = max(min(end, window.end) - max(start, window.start), timedelta(0))
    return day.expected if inside == end - start else part_of_day(day, inside / (end - start))


def _shown_keys(keys: tuple[str, ...]) -> tuple[str | None, ...]:
    """A group's keys as a report shows them: the rollups' "" (calls without a user or
    project) is no key, None, never a blank name."""
    return tuple(key or None for key in keys)


def _per_model(totals: list[Totals]) -> list[Totals]:
    """The ``model`` dimension's totals (per provider and model) summed per model, keyed by
    it (``key1``), dearest first."""
    merged: dict[str, Totals] = {}
    for t in totals:
        seen = merged.get(t.key2)
        merged[t.key2] = t._replace(key1=t.key2, key2="") if seen is None else seen.plus(t)
    return sorted(merged.values(), key=lambda t: (-t.cost, t.key1))


def _change(now: Totals, then: Totals) -> tuple[Cell, ...]:
    """A group's ``_CHANGE_COLUMNS`` from its totals now and then."""
    now_cost, then_cost = now.priced_cost, then.priced_cost
    change = percent = None
    if now_cost is not None and then_cost is not None:
        with exact_money():
            change = now_cost - then_cost
        percent = percent_of(change, then_cost)
    return (
        now_cost,
        then_cost,
        change,
        percent,
        now.unpriced_requests,
        then.unpriced_requests,
    )


def _lengths_note(current: timedelta, previous: timedelta) -> list[str]:
    """Windows of different lengths (beyond a DST change's hour) compare totals, not rates:
    a week against the month before reads as a fall of three quarters at the same pace."""
    if abs(current - previous) <= _DST_HOUR:
        return []
    return [
        f"the windows differ in length ({_length(current)} against {_length(previous)}):"
        " the changes are of their totals, not of their daily rates"
    ]


def _length(span: timedelta) -> str:
    if span % _DAY:
        return f"{span / timedelta(hours=1):g} hours"
    days = span // _DAY
    return "1 day" if days == 1 else f"{days} days"


def _months_table(rows: list[tuple[Cell, ...]]) -> Table:
    """The projection's table of calendar months."""
    return Table(
        "Per calendar month (each reset starts from zero)",
        ("month", "actual_usd", "unpriced_requests", "projected_total_usd", "low_usd", "high_usd"),
        rows,
    )


def _next_month(first: date) -> date:
    """The first day of the month after the one ``first`` begins."""
    return (first + timedelta(days=31)).replace(day=1)


def _unpriced_note(unpriced: int) -> list[str]:
    """What the forecast's days leave out: their calls without a price count nothing."""
    if not unpriced:
        return []
    calls, them = ("1 call", "it") if unpriced == 1 else (f"{unpriced} calls", "them")
    return [f"{calls} in those days had no price: the forecast leaves {them} out"]


def _spikes_note(history: list[tuple[date, Decimal]]) -> list[str]:
    """The day the forecast leaves out as a one-off spike, with its spend."""
    spikes = set(one_off_spikes(history))
    return [
        f"left out of the fit as a one-off spike, far above every other day: {day}"
        f" (${shown_money(cost)})"
        for day, cost in history
        if day in spikes
    ]


def _zoned(start: datetime, end: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """A window of ``tz``'s days shown from its midnights: in UTC, Tokyo's December read
    "2026-11-30T15:00:00+00:00 to 2026-12-31T15:00:00+00:00", the wrong days."""
    return start.astimezone(tz), end.astimezone(tz)


def _zone_note(tz: tzinfo) -> list[str]:
    return [] if str(tz) == "UTC" else [f"days in time zone {tz}"]


class _Piece(NamedTuple):
    """A range of one grain's rollup rows that counts in span ``span`` (1 for
    [bounds[0], bounds[1]), ...), added (``sign`` 1) or taken away (-1)."""

    span: int
    sign: int
    start: datetime
    end: datetime


def _utc_midnight(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _signed(pieces: list[_Piece], span: int, start: datetime, end: datetime) -> None:
    """Add the range [start, end) to ``pieces``; a reversed range is taken away."""
    if start < end:
        pieces.append(_Piece(span, 1, start, end))
    elif end < start:
        pieces.append(_Piece(span, -1, end, start))


def span_pieces(bounds: Sequence[datetime]) -> tuple[list[_Piece], list[_Piece]]:
    """The daily and the quarter-hour row ranges that sum to each span between consecutive
    ``bounds`` (ascending, on quarter hours), reading the fewest rows a key.

    A span [a, b) is the days [s, e) plus the quarter hours [a, s) and [e, b), where s is
    the UTC midnight on or before a or the one after it (likewise e for b), and a range
    written backwards is taken away: [a, s) with s before a subtracts the quarter hours
    from s to a. So a span on UTC midnights reads daily rows only, a window's ragged ends
    at most 48 quarter hours each, and a local day of a zone five hours behind UTC one
    daily row, minus the 20 quarter hours before its start, plus the 20 after the UTC
    midnight in it (41 rows a key instead of 96).
    """
    days: list[_Piece] = []
    quarters: list[_Piece] = []
    for span, (a, b) in enumerate(itertools.pairwise(bounds), start=1):
        if b <= a:
            continue
        s, e = min(
            itertools.product(_midnights_around(a), _midnights_around(b)),
            key=functools.partial(_rows_read, a, b),
        )
        _signed(days, span, s, e)
        _signed(quarters, span, a, s)
        _signed(quarters, span, e, b)
    return days, quarters


def _midnights_around(at: datetime) -> list[datetime]:
    """The UTC midnight on or before ``at`` and, unless that is ``at``, the one after."""
    before = _utc_midnight(at)
    return [before] if before == at else [before, before + _DAY]


def _rows_read(a: datetime, b: datetime, days: tuple[datetime, datetime]) -> float:
    """Rows a key read for [a, b) as the days [s, e) and the quarter hours between."""
    s, e = days
    return abs(e - s) / _DAY + (abs(s - a) + abs(b - e)) / _QUARTER


def _rows_sql(table: str, grain: str) -> str:
    """Each row of ``table`` in one of the ``grain`` pieces, with its span and its measures
    signed. ``OFFSET 0`` keeps the subquery apart, so each piece is its own index range
    scan on (dimension, period_start) whatever the planner estimates."""
    signed = ", ".join(f"p.sign * r.{name} AS {name}" for name, _, _ in MEASURES)
    return f"""
        SELECT p.span, r.key1, r.key2, {signed}
        FROM unnest(%({grain}_span)s::int[], %({grain}_sign)s::int[],
                    %({grain}_start)s::timestamptz[], %({grain}_end)s::timestamptz[])
             AS p(span, sign, lo, hi)
        CROSS JOIN LATERAL (
            SELECT * FROM {table} r
            WHERE r.dimension = %(d)s AND r.period_start >= p.lo AND r.period_start < p.hi
              AND (%(key1)s::text IS NULL OR r.key1 = %(key1)s)
              AND (%(key2)s::text IS NULL OR r.key2 = %(key2)s)
            OFFSET 0) r"""


# The signed rows of ``dimension`` (and ``key``, when not null) in the spans between
# ``bounds`` (see ``span_pieces``): summed per span, each quarter hour counts exactly once.
_SPANS = (
    f"{_rows_sql('report_daily', 'day')}\n    UNION ALL{_rows_sql('report_quarterly', 'quarter')}"
)


def _span_params(dimension: str, key: str | None, bounds: Sequence[datetime]) -> dict[str, object]:
    # A model's rows are keyed by provider and model: its key is the second, and a
    # provider of the same name ("mistral") is another key, never matched for it.
    keyed = "key2" if dimension == "model" else "key1"
    params: dict[str, object] = {"d": dimension, "key1": None, "key2": None, keyed: key}
    for grain, found in zip(("day", "quarter"), span_pieces(bounds), strict=True):
        for field in _Piece._fields:
            params[f"{grain}_{field}"] = [getattr(piece, field) for piece in found]
    return params
