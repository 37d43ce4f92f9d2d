"""A queue per caller, taken from round robin: a caller with a long backlog gets one
item in each round like every other caller, never a place in front of all of them.

Like ``asyncio.Queue``, it can be joined: ``join`` waits until every item put has been
taken and its taker has said it is dealt with (``task_done``), so a service that stops
taking new requests can first answer the ones it has."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        """Callers with items waiting, in the order they are served next."""
        self._waiting = 0
        self._ready = asyncio.Event()
        self._unfinished = 0
        """Items put and not yet dealt with (``task_done``)."""
        self._finished = asyncio.Event()
        self._finished.set()

    def __len__(self) -> int:
        return self._waiting

    def waiting(self, caller: str) -> int:
        queue = self._queues.get(caller)
        return 0 if queue is None else len(queue)

    def put(self, caller: str, item: T) -> None:
        queue = self._queues.get(caller)
        if queue is None:
            queue = self._queues[caller] = deque()
        queue.append(item)
        self._waiting += 1
        self._unfinished += 1
        self._finished.clear()
        self._ready.set()

    def task_done(self, count: int = 1) -> None:
        """``count`` items taken are dealt with."""
        if count > self._unfinished:
            raise ValueError("task_done() called for more items than were put")
        self._unfinished -= count
        if not self._unfinished:
            self._finished.set()

    async def join(self) -> None:
        """Wait until every item put has been taken and dealt with (``task_done``)."""
        await self._finished.wait()

    async def take(self, most: int) -> list[tuple[str, T]]:
        """Wait for an item, then take up to ``most``: one of each caller in turn, the
        round going on where the last take left it."""
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        taken: list[tuple[str, T]] = []
        while self._queues and len(taken) < most:
            caller = next(iter(self._queues))
            queue = self._queues.pop(caller)
            taken.append((caller, queue.popleft()))
            if queue:
                self._queues[caller] = queue  # to the back of the round
        self._waiting -= len(taken)
        return taken
