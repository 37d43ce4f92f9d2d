"""Streamed answers are counted while open and given back however they end: finished,
abandoned mid-way, or dropped before they started."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

from services.api.open_streams import OpenStreams


async def chunks() -> AsyncIterator[bytes]:
    yield b"a"
    yield b"b"


async def test_a_stream_counts_for_its_holder_until_it_is_gone() -> None:
    streams = OpenStreams()
    finished, abandoned, never_started = chunks(), chunks(), chunks()
    for stream in (finished, abandoned, never_started):
        streams.hold(stream, "key-1")
    streams.hold(chunks_kept := chunks(), "key-2")
    assert (streams.count("key-1"), streams.count("key-2"), streams.count()) == (3, 1, 0)

    assert [c async for c in finished] == [b"a", b"b"]
    assert await anext(abandoned) == b"a"
    await abandoned.aclose()  # the client went away mid-way
    del finished, abandoned, never_started, stream
    gc.collect()
    await asyncio.sleep(0)
    assert (streams.count("key-1"), streams.count("key-2")) == (0, 1)
    assert chunks_kept is not None
