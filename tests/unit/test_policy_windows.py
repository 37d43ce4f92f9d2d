"""Policy windows and applicability, property-tested: daily at midnight, weekly on Monday,
monthly on the 1st, in UTC and in a named time zone across DST changes; custom ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget.policies import CallScope, applicable, policy_window
from events import BudgetPeriod, BudgetPolicy, BudgetScope

instants = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC)
)
zones = st.sampled_from([None, "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
calendar = st.sampled_from([BudgetPeriod.DAILY, BudgetPeriod.WEEKLY, BudgetPeriod.MONTHLY])


def policy(**fields: object) -> BudgetPolicy:
    return BudgetPolicy.model_validate({"name": "p", "limit_amount": Decimal(10), **fields})


@given(instants, calendar, zones)
def test_the_window_holds_the_instant_and_starts_at_local_midnight(
    at: datetime, period: BudgetPeriod, zone: str | None
) -> None:
    window = policy_window(policy(period=period, timezone=zone), at)
    assert window is not None
    start, end = window
    assert start <= at < end
    local = start.astimezone(ZoneInfo(zone or "UTC"))
    assert (local.hour, local.minute, local.second) == (0, 0, 0)
    if period is BudgetPeriod.WEEKLY:
        assert local.weekday() == 0
    if period is BudgetPeriod.MONTHLY:
        assert local.day == 1


@given(instants, calendar, zones)
def test_consecutive_windows_meet_without_gap_or_overlap(
    at: datetime, period: BudgetPeriod, zone: str | None
) -> None:
    p = policy(period=period, timezone=zone)
    window = policy_window(p, at)
    assert window is not None
    assert policy_window(p, window[1]) == (window[1], policy_window(p, window[1])[1])  # type: ignore[index]
    previous = policy_window(p, window[0] - timedelta(microseconds=1))
    assert previous is not None and previous[1] == window[0]


def test_a_day_across_the_spring_dst_change_is_23_hours_in_berlin() -> None:
    start, end = policy_window(  # type: ignore[misc]
        policy(period="daily", timezone="Europe/Berlin"), datetime(2026, 3, 29, 12, tzinfo=UTC)
    )
    assert end - start == timedelta(hours=23)
    assert start == datetime(2026, 3, 28, 23, tzinfo=UTC)


@given(instants, st.integers(1, 24 * 4 * 60))
def test_a_custom_range_holds_exactly_its_instants(at: datetime, quarters: int) -> None:
    start = at.replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(minutes=15 * quarters)
    p = policy(period="custom", custom_start=start, custom_end=end)
    assert policy_window(p, start) == (start, end)
    assert policy_window(p, end - timedelta(microseconds=1)) == (start, end)
    assert policy_window(p, end) is None
    assert policy_window(p, start - timedelta(microseconds=1)) is None


def test_custom_bounds_must_fall_on_a_quarter_hour() -> None:
    with pytest.raises(ValueError, match="quarter hour"):
        policy(
            period="custom",
            custom_start=datetime(2026, 1, 1, 0, 7, tzinfo=UTC),
            custom_end=datetime(2026, 2, 1, tzinfo=UTC),
        )


def test_an_unknown_time_zone_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        policy(timezone="Mars/Olympus")


def test_a_users_own_policy_replaces_the_per_user_default() -> None:
    default = policy(policy_id="default", scope=BudgetScope.USER)
    alice = policy(policy_id="alice", scope=BudgetScope.USER, scope_key="alice")
    project = policy(policy_id="apollo", scope=BudgetScope.PROJECT, scope_key="apollo")
    now = datetime(2026, 5, 1, tzinfo=UTC)

    def ids(user: str, project_id: str | None = None) -> list[str]:
        call = CallScope(model="gpt-4o", user_id=user, project_id=project_id)
        return [w.policy.policy_id for w in applicable([default, alice, project], call, now)]

    assert ids("alice", "apollo") == ["alice", "apollo"]
    assert ids("bob") == ["default"]
    assert [w.key for w in applicable([default], CallScope(model="m", user_id="bob"), now)] == [
        "bob"
    ]


def test_a_users_own_policy_out_of_its_range_leaves_her_the_default() -> None:
    default = policy(policy_id="default", scope=BudgetScope.USER, action="block")
    april = policy(
        policy_id="alice-april",
        scope=BudgetScope.USER,
        scope_key="alice",
        period=BudgetPeriod.CUSTOM,
        custom_start=datetime(2026, 4, 1, tzinfo=UTC),
        custom_end=datetime(2026, 5, 1, tzinfo=UTC),
    )
    alice = CallScope(model="gpt-4o", user_id="alice")

    def ids(at: datetime) -> list[str]:
        return [w.policy.policy_id for w in applicable([default, april], alice, at)]

    assert ids(datetime(2026, 3, 10, tzinfo=UTC)) == ["default"]
    assert ids(datetime(2026, 4, 10, tzinfo=UTC)) == ["alice-april"]
    assert ids(datetime(2026, 5, 1, tzinfo=UTC)) == ["default"]


def test_per_key_policies_skip_calls_without_that_key() -> None:
    per_project = policy(scope=BudgetScope.PROJECT)
    per_user = policy(scope=BudgetScope.USER)
    at = datetime(2026, 5, 1, tzinfo=UTC)
    assert applicable([per_project], CallScope(model="m"), at) == []
    # an empty id is no id: spend is never counted under the empty key
    empty = CallScope(model="m", user_id="", project_id="")
    assert applicable([per_project, per_user], empty, at) == []
