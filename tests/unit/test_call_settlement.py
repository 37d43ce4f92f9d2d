"""An instrumented call the provider answered never fails for the budget's sake: recording
(or releasing) after the tracker's event loop has ended (a tracker started in an earlier
``asyncio.run``) is logged, not raised into the caller."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from budget.instrumentation.lifecycle import Attribution, Call, Measured, Plan
from events import Usage


async def _released() -> None:
    return None


def closed_tracker() -> Any:
    loop = asyncio.new_event_loop()
    loop.close()
    return SimpleNamespace(
        loop=loop,
        publisher=None,
        usage_event=lambda **fields: SimpleNamespace(**fields),
        release_reservation=lambda reservation_id: _released(),
    )


def test_recording_after_the_trackers_loop_ended_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = Call(closed_tracker(), "openai", Plan(model="gpt-4o"), Attribution(), None, 0)
    with caplog.at_level(logging.ERROR):
        call.record(Measured(Usage(input_uncached=10)))
    assert "its budget tracker is closed" in caplog.text
    assert call.settled


def test_releasing_after_the_trackers_loop_ended_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = Call(closed_tracker(), "openai", Plan(model="gpt-4o"), Attribution(), "hold-1", 0)
    with caplog.at_level(logging.ERROR):
        call.release()
    assert "could not release reservation hold-1" in caplog.text
