"""A module-level lock that each event loop in turn can use.

An ``asyncio.Lock`` is bound to the first loop that has to wait on it, and refuses every
other (``RuntimeError: ... is bound to a different event loop``): a process-wide lock made
at import breaks the second ``asyncio.run`` of a script whose first one contended for it.
"""

from __future__ import annotations

import asyncio
import weakref

__all__ = ["LoopLock"]


class LoopLock:
    """``async with lock():``: the running loop's own ``asyncio.Lock``."""

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock
