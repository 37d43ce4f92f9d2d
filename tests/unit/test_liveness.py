"""A loop is healthy while its task runs and no turn outlasts ``stall_after``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from services.liveness import Liveness, heartbeat


async def wait_for(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


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
    assert liveness.problems(why=False) == ["dead died", "stopped stopped"]


async def test_failing_for_longer_than_stall_after_is_a_stall_until_a_turn_completes() -> None:
    liveness = Liveness()
    loop = liveness.loop("worker", stall_after=0.0)
    task = loop.start(asyncio.Event().wait())
    loop.failing("OperationalError: connection refused")
    await asyncio.sleep(0.001)  # any time at all outlasts stall_after=0
    assert liveness.problems()[0].startswith("worker stalled: failing for")
    assert liveness.problems()[0].endswith(": OperationalError: connection refused")
    # for an asker over NATS: the failure's own text (libpq's names the database) left out
    assert liveness.problems(why=False)[0].endswith("s")
    assert "OperationalError" not in liveness.problems(why=False)[0]
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


async def test_a_dependency_down_is_unhealthy_but_not_stuck() -> None:
    """What ``budget up`` restarts a process for (``problems(failing=False)``): a loop
    dead or stuck in one turn, not one failing and retrying, inside a turn or between
    turns (a database down, which a restart cannot bring back)."""
    liveness = Liveness()
    between = liveness.loop("worker", stall_after=0.0)
    within = liveness.loop("decider", stall_after=0.0)
    stuck = liveness.loop("stuck", stall_after=0.0)
    gate = asyncio.Event()
    tasks = [loop.start(gate.wait()) for loop in (between, within, stuck)]
    between.failing("OperationalError: connection refused")
    with within.turn(), stuck.turn():
        within.failing("OperationalError: connection refused")  # retried inside the turn
        await asyncio.sleep(0.001)
        assert [p.split(":")[0] for p in liveness.problems()] == [
            "worker stalled",
            "decider stalled",
            "stuck stalled",
        ]
        assert [p.split(":")[0] for p in liveness.problems(failing=False)] == ["stuck stalled"]
    gate.set()
    await asyncio.gather(*tasks)


async def test_the_alive_file_moves_while_a_dependency_is_down_and_the_heartbeat_not(
    tmp_path: Path,
) -> None:
    liveness = Liveness()
    loop = liveness.loop("worker", stall_after=0.0)
    gate = asyncio.Event()
    task = loop.start(gate.wait())
    loop.failing("OperationalError: connection refused")
    beat, alive = tmp_path / "heartbeat", tmp_path / "alive"
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat(beat, stop, liveness, every=0.01, alive=alive))
    await wait_for(alive.exists, "the alive file touched")
    assert not beat.exists(), "touched in the same pass as the alive file, had it been"
    loop.recovered()
    await wait_for(beat.exists, "the heartbeat touched once the loop got on again")
    stop.set()
    gate.set()
    await asyncio.gather(beating, task)
