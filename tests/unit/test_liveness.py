"""A loop is healthy while its task runs and no turn outlasts ``stall_after``."""

from __future__ import annotations

import asyncio
import contextlib

from services.liveness import Liveness


async def test_waiting_for_work_is_healthy_and_a_long_turn_is_a_stall() -> None:
    liveness = Liveness()
    loop = liveness.loop("decider", stall_after=0.0)
    assert liveness.problems() == ["decider not started"]
    gate = asyncio.Event()
    task = loop.start(gate.wait())
    assert liveness.problems() == []
    with loop.turn():
        await asyncio.sleep(0.001)  # any time at all outlasts stall_after=0
        assert [p.split(":")[0] for p in liveness.problems()] == ["decider stalled"]
    assert liveness.problems() == [] and loop.turns == 1
    gate.set()
    await task
    assert liveness.problems() == ["decider ended"]


async def test_a_dead_or_stopped_loop_says_why() -> None:
    liveness = Liveness()

    async def fail() -> None:
        raise ZeroDivisionError("boom")

    dead = liveness.loop("dead", stall_after=60)
    await asyncio.gather(dead.start(fail()), return_exceptions=True)
    stopped = liveness.loop("stopped", stall_after=60)
    task = stopped.start(asyncio.Event().wait())
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert liveness.problems() == ["dead died: ZeroDivisionError('boom')", "stopped stopped"]


async def test_failing_for_longer_than_stall_after_is_a_stall_until_a_turn_completes() -> None:
    liveness = Liveness()
    loop = liveness.loop("worker", stall_after=0.0)
    task = loop.start(asyncio.Event().wait())
    loop.failing("OperationalError: connection refused")
    await asyncio.sleep(0.001)  # any time at all outlasts stall_after=0
    assert liveness.problems()[0].startswith("worker stalled: failing for")
    assert liveness.problems()[0].endswith(": OperationalError: connection refused")
    with contextlib.suppress(ZeroDivisionError), loop.turn():
        raise ZeroDivisionError  # a turn that fails is no progress
    assert liveness.problems()[0].endswith(": OperationalError: connection refused")
    with loop.turn():
        pass
    assert liveness.problems() == []
    loop.failing("again")
    loop.recovered()
    assert liveness.problems() == []
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
