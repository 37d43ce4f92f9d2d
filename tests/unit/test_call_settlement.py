"""An instrumented call the provider answered never fails for the budget's sake: recording
(or releasing) after the tracker's event loop has ended (a tracker started in an earlier
``asyncio.run``) is logged, not raised into the caller; nor, first recorded as the
interpreter exits, does it keep the process from exiting."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
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


_UNREAD_STREAM_AT_EXIT = """
import asyncio

import httpx2
import openai

import budget
from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker

asyncio.run(asyncio.sleep(0))  # the script ran some asyncio code before


def answer(request):
    sse = {"content-type": "text/event-stream"}
    return httpx2.Response(200, content=b"data: [DONE]\\n\\n", headers=sse)


http = httpx2.Client(transport=httpx2.MockTransport(answer))
client = openai.OpenAI(api_key="sk-test", http_client=http)
# A tracker never started (as a disabled one): the background loop serves it.
tracker = UsageTracker(Settings(), PricingRegistry(), DisabledPublisher())
budget.instrument(client, tracker=tracker)
hello = [{"role": "user", "content": "hi"}]
stream = client.chat.completions.create(model="gpt-4o", messages=hello, stream=True)
print("asked", flush=True)
"""


def test_a_stream_first_recorded_as_the_interpreter_exits_lets_it_exit() -> None:
    """A stream never read, collected as the interpreter finalizes, is recorded then: for
    a tracker with no loop of its own (disabled, or not started) that had started the
    background loop's thread, which cannot start then, and the process hung at exit for
    good (a script whose first call was a stream, interrupted by Ctrl-C, never ended)."""
    done = subprocess.run(
        [sys.executable, "-c", _UNREAD_STREAM_AT_EXIT], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (0, "asked\n"), done.stderr
