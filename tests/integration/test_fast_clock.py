"""A host whose clock runs ahead of the NATS server's, on real NATS and PostgreSQL: the
projections judge an event's time by when NATS stored it and dead-letter what lies more
than ``max_clock_skew`` ahead, which the host's own check, by the same clock, cannot see.
A change from such a host says it did not happen (instead of reporting success while the
projections dropped it), and a tracker logs that what it records is not counted."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

import budget.checks
import budget.manager
from budget.commands import ClockAhead
from events import BudgetPolicy, utc_now
from projections.engine.deadletter import recent_dead_letters

from enforcement import EnforcementStack
from support import wait_for

pytestmark = pytest.mark.integration


def ten_minutes_ahead() -> datetime:
    return utc_now() + timedelta(minutes=10)


async def test_a_change_from_a_host_whose_clock_is_ahead_says_nothing_changed(
    stack: EnforcementStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget.manager, "utc_now", ten_minutes_ahead)
    cap = BudgetPolicy(policy_id="cap", name="cap", limit_amount=Decimal(5))
    with pytest.raises(ClockAhead, match=r"ahead of the NATS server's.*nothing changed"):
        await stack.manager.set_policy(cap)

    async def dead_lettered() -> bool:
        """the policies worker dead-lettered the change, as the error said it would"""
        letters = await recent_dead_letters(stack.nc.jetstream(), stack.settings.topology)
        return any("max_clock_skew" in letter.reason for letter in letters)

    await wait_for(dead_lettered)
    monkeypatch.undo()
    assert await stack.manager.get_policy("cap") is None


async def test_a_tracker_whose_clock_is_ahead_of_the_enforcers_says_so(
    stack: EnforcementStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(budget.checks, "utc_now", ten_minutes_ahead)
    with caplog.at_level(logging.ERROR, logger="budget.checks"):
        for user in ("alice", "bob"):  # two snapshots; one error a minute
            await stack.tracker.check_budget("gpt-4o", 100, user)
    clock = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
    assert len(clock) == 1, clock
    assert "ahead of the budget enforcer's, more than max_clock_skew" in clock[0]
    assert "dead-lettered, not counted" in clock[0]
