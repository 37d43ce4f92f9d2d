"""Waiting for an ``asyncio.Event`` at most so long, in a way a cancellation always ends.

On Python 3.11 ``asyncio.wait_for`` loses a cancellation that arrives as the awaited event
is set (bpo-42130, fixed in 3.12): a task looping over such waits then never ends when it
is cancelled, and whoever awaits it on shutdown hangs. ``asyncio.timeout`` tells its own
cancellation from another's.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_set"]


async def wait_set(event: asyncio.Event, seconds: float | None) -> bool:
    """True once ``event`` is set, False after ``seconds`` (``None``: no limit)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
