"""``ReportGenerator``: summary, trend, comparison, projection and custom reports (seed
API), built by the query service from the report rollups and sent over NATS.

Windows are exact to the quarter hour; a window that does not start or end on a quarter
hour is widened to whole quarter hours, and the report says so. The summary, trend and
projection count the days, weeks and months of ``tz`` (an IANA name, default UTC). Wrong
arguments raise ``ValueError`` with the query service's reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time

from budget.config import Settings
from budget.loop_locks import LoopLock
from budget.periods import Period
from budget.queries import Queries, RpcQueries, question
from budget.report_format import ExportFormat, Report
from budget.tracker import UsageTracker, get_usage_tracker
from events.policy import iana_zone
from events.queries import MAX_HISTORY_ROWS, ReportQuery

__all__ = ["GROUPS", "ExportFormat", "Report", "ReportGenerator", "get_report_generator"]

GROUPS = ("provider", "model", "user", "project", "kind")
"""What reports group by: the report materializer's rollup dimensions."""


class ReportGenerator:
    def __init__(self, queries: Queries) -> None:
        self.queries = queries

    async def generate_report(
        self,
        start_date: datetime | date,
        end_date: datetime | date,
        group_by: Sequence[str] | None = (),
    ) -> Report:
        """Totals in [start_date, end_date) grouped by ``group_by`` (``GROUPS``, or one tag
        alone, ``tag:NAME``; empty or None: one total; a name alone is that one). A date is
        its midnight UTC, here and in the other windows."""
        query = question(
            ReportQuery,
            {"start": "start_date", "end": "end_date"},
            kind="custom",
            start=_instant(start_date),
            end=_instant(end_date),
            group_by=_groups(group_by),
        )
        return await self.queries.report(query)

    async def generate_summary_report(
        self, period: str | Period = Period.MONTHLY, tz: str = "UTC"
    ) -> Report:
        """The current calendar period of ``tz`` by provider and model, and the budgets."""
        query = question(
            ReportQuery,
            {},
            kind="summary",
            period=period.value if isinstance(period, Period) else period,
            tz=_zone(tz),
        )
        return await self.queries.report(query)

    async def generate_trend_report(
        self, days: int = 30, interval: str = "daily", tz: str = "UTC"
    ) -> Report:
        """Spend per day (or ISO week from Monday) of ``tz`` over the last ``days`` days,
        today included, with the change from the previous point."""
        if days < 1:
            raise ValueError("days must be at least 1")
        query = question(ReportQuery, {}, kind="trend", days=days, interval=interval, tz=_zone(tz))
        return await self.queries.report(query)

    async def generate_comparison_report(
        self,
        current_start: datetime | date,
        current_end: datetime | date,
        previous_start: datetime | date,
        previous_end: datetime | date,
        group_by: Sequence[str] | None = ("model",),
    ) -> Report:
        """Each group's totals in two windows, with the absolute and percent change (None:
        by model)."""
        query = question(
            ReportQuery,
            {"start": "current_start", "end": "current_end"},
            kind="comparison",
            start=_instant(current_start),
            end=_instant(current_end),
            previous_start=_instant(previous_start),
            previous_end=_instant(previous_end),
            group_by=_groups(("model",) if group_by is None else group_by),
        )
        return await self.queries.report(query)

    async def get_usage_history(
        self,
        start_date: datetime | date,
        end_date: datetime | date,
        *,
        provider: str | None = None,
        model: str | None = None,
        user_id: str | None = None,
        project_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int = 1000,
    ) -> Report:
        """The calls in [start_date, end_date) that match every filter given (``tags``:
        each of them, with that value), oldest first, with their current cost; at most
        ``limit`` (a note says if more match)."""
        if not 1 <= limit <= MAX_HISTORY_ROWS:
            raise ValueError(f"limit must be between 1 and {MAX_HISTORY_ROWS}, not {limit}")
        query = question(
            ReportQuery,
            {"start": "start_date", "end": "end_date"},
            kind="history",
            start=_instant(start_date),
            end=_instant(end_date),
            provider=provider,
            model=model,
            user_id=user_id,
            project_id=project_id,
            tags=dict(tags or {}),
            limit=limit,
        )
        return await self.queries.report(query)

    async def generate_projection_report(
        self, days_to_project: int = 30, tz: str = "UTC"
    ) -> Report:
        """Forecast daily spend (days of ``tz``) for ``days_to_project`` days and to the end
        of the month, per calendar month, and when each budget would be exhausted at this
        pace."""
        if days_to_project < 1:
            raise ValueError("days_to_project must be at least 1")
        query = question(
            ReportQuery,
            {"days": "days_to_project"},
            kind="projection",
            days=days_to_project,
            tz=_zone(tz),
        )
        return await self.queries.report(query)


def _instant(value: datetime | date) -> datetime | date:
    """A date (the seed's ``start_date``) as its midnight UTC, the rollups' days; anything
    else as given, for the query to check."""
    if type(value) is date:  # not a datetime, a date's subclass
        return datetime.combine(value, time(), UTC)
    return value


def _groups(group_by: Sequence[str] | None) -> list[str]:
    """A name alone is one group (``list("model")`` would be its letters); None is none
    (``list(None)`` raised TypeError)."""
    if group_by is None:
        return []
    return [group_by] if isinstance(group_by, str) else list(group_by)


def _zone(tz: object) -> str:
    """``tz`` if it is an IANA zone's name, else one line naming the argument (the query
    model's error is pydantic's, several lines and a link)."""
    if not isinstance(tz, str):
        raise ValueError(f"tz: an IANA time zone's name, not {type(tz).__name__}")
    try:
        return iana_zone(tz)
    except ValueError as exc:
        raise ValueError(f"tz: {exc}") from None


_generator: tuple[UsageTracker, ReportGenerator] | None = None
"""The process's report generator, and the tracker whose connection it asks over."""
_lock = LoopLock()


async def get_report_generator(settings: Settings | None = None) -> ReportGenerator:
    """The process's report generator, asking over the usage tracker's connection (a new
    generator for a new tracker: ``get_usage_tracker``)."""
    global _generator
    async with _lock():
        tracker = await get_usage_tracker(settings)
        if _generator is None or _generator[0] is not tracker:
            queries = RpcQueries(settings or tracker.settings, lambda: tracker.publisher.client)
            _generator = (tracker, ReportGenerator(queries))
        return _generator[1]
