"""``wait_set``: an event or a time limit, and a cancellation that always ends the wait,
even one that arrives as the event is set (Python 3.11's ``asyncio.wait_for`` loses it,
and a task looping over such waits never ends)."""

from __future__ import annotations

import asyncio
import contextlib

from budget.waits import wait_set


async def test_a_set_event_ends_the_wait_and_a_time_limit_ends_it_too() -> None:
    event = asyncio.Event()
    event.set()
    assert await wait_set(event, 5) is True
    assert await wait_set(asyncio.Event(), 0.01) is False


async def test_a_cancellation_as_the_event_is_set_ends_a_waiting_loop() -> None:
    event = asyncio.Event()
    waiting = asyncio.Event()

    async def wait_forever() -> None:
        while True:
            waiting.set()
            await wait_set(event, 10)
            event.clear()

    for _ in range(20):
        task = asyncio.create_task(wait_forever())
        await waiting.wait()
        await asyncio.sleep(0)  # the task is inside its wait
        event.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done == {task}
        assert task.cancelled()
        waiting.clear()
        with contextlib.suppress(asyncio.CancelledError):
            await task
