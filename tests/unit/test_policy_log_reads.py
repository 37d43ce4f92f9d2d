"""The policy log's reads never pile up (pure scheduling logic, on a fake clock and a
fake JetStream whose answers the test releases): one read in flight at a time, a read
sent too long ago is not waited on, and a failed read is not retried at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.client import Client

from budget import policy_log
from budget.policy_log import POLICY_NEWS_WITHIN, RETRY_AFTER_FAILURE, PolicyLog
from budget.rpc import Unanswered
from events import Topology


class SlowJetStream:
    """Every ``get_last_msg`` waits for ``answer`` and then times out."""

    def __init__(self) -> None:
        self.asked = 0
        self.read_sent = asyncio.Event()  # both policy subjects asked
        self.answer = asyncio.Event()

    async def get_last_msg(self, stream: str, subject: str, *, direct: bool = False) -> Any:
        self.asked += 1
        if self.asked % 2 == 0:
            self.read_sent.set()
        await self.answer.wait()
        raise TimeoutError


async def test_failing_reads_never_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(policy_log, "time", SimpleNamespace(monotonic=lambda: now[0]))
    js = SlowJetStream()
    log = PolicyLog(Topology(), timeout=2)
    log.use(cast(Client, SimpleNamespace(is_connected=True, jetstream=lambda timeout: js)))

    first = asyncio.create_task(log.end())
    await js.read_sent.wait()
    now[0] += POLICY_NEWS_WITHIN * 5  # the read in flight is too old for a new check
    with pytest.raises(Unanswered, match="not been answered"):
        async with asyncio.timeout(10):  # a new read would wait for ever: fail, not hang
            await log.end()
    assert js.asked == 2  # and no second read was sent

    js.answer.set()
    with pytest.raises(Unanswered, match="TimeoutError"):
        await first
    with pytest.raises(Unanswered, match="TimeoutError"):
        await log.end()  # failed just now: not tried again yet
    assert js.asked == 2

    now[0] += RETRY_AFTER_FAILURE
    with pytest.raises(Unanswered, match="TimeoutError"):
        await log.end()
    assert js.asked == 4  # tried again
