"""The SDK's streams, replaced with ones that watch their items go by.

A stream records its call once, at the first of: its end, an error inside it, ``close``
(or leaving its ``with`` block), or its collection by the garbage collector, whatever it
has seen by then: a stream abandoned half-way is still charged for what it consumed. A
stream that fails before its first item releases the reservation instead.
"""

from __future__ import annotations

import contextvars
import inspect
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

from budget.instrumentation.lifecycle import Call
from budget.instrumentation.methods import Observer, estimated

__all__ = ["AsyncStream", "SyncStream", "record_collected", "record_seen", "watch", "watch_async"]


def record_seen(call: Call, observer: Observer, error: BaseException | None = None) -> None:
    """Record what the stream saw (once; ``error``: what ended it): never raises, the
    stream's consumer must not see the tracker's trouble."""
    if call.settled:
        return
    try:
        measured = observer.measured()
    except (ValueError, AttributeError, TypeError, LookupError) as exc:
        measured = estimated(call.plan, f"no usable usage in the stream ({exc})"[:400])
    call.record(measured, error)


def record_collected(call: Call, observer: Observer) -> None:
    """``record_seen`` from a garbage collector's finaliser: in an empty context, so the
    observers (``budget.otel``) see no caller's span; whichever is current when the
    collector runs is not the call's."""
    contextvars.Context().run(record_seen, call, observer)


def watch(stream: Any, observer: Observer, call: Call) -> Generator[Any, None, None]:
    """``stream``'s items, each shown to ``observer``; the call recorded when it ends."""
    # Not a method: a generator holding its stream object would make a reference cycle,
    # and an abandoned stream would wait for the cycle collector to be recorded.
    seen = False
    try:
        for item in stream:
            seen = True
            if observer.see(item):
                yield item
    except Exception as exc:
        if not seen:  # the request itself failed (a generator sends it on first use)
            call.fail(exc)
        record_seen(call, observer, exc)
        raise
    finally:
        record_seen(call, observer)


async def watch_async(stream: Any, observer: Observer, call: Call) -> AsyncGenerator[Any, None]:
    """``watch`` for an async stream."""
    seen = False
    try:
        async for item in stream:
            seen = True
            if observer.see(item):
                yield item
    except Exception as exc:
        if not seen:
            call.fail(exc)
        record_seen(call, observer, exc)
        raise
    finally:
        record_seen(call, observer)


def _record_on_close(response: Any, call: Call, observer: Observer) -> None:
    """Record the call when the stream's HTTP response is closed: OpenAI's ``stream()``
    helpers close that, not the stream they read, and hold
    themselves in a reference cycle, so nothing else would record before the cycle
    collector ran. The closures hold the call and observer, not the watched stream (which
    would be a cycle of its own), and record in the call's context (its span), wherever
    the response is closed: by the collector too; and with the error the response is
    closed as it propagates (the SDK closes it so as a lost connection ends the stream,
    before the watch sees the error)."""
    if response is None:
        return
    close, aclose = getattr(response, "close", None), getattr(response, "aclose", None)
    context = contextvars.copy_context()
    if callable(close):

        def closing(*args: Any, **kwargs: Any) -> Any:
            error = _in_flight()
            try:
                return close(*args, **kwargs)
            finally:
                context.run(record_seen, call, observer, error)

        response.close = closing
    if callable(aclose):

        async def aclosing(*args: Any, **kwargs: Any) -> Any:
            error = _in_flight()
            try:
                return await aclose(*args, **kwargs)
            finally:
                context.run(record_seen, call, observer, error)

        response.aclose = aclosing


def _in_flight() -> Exception | None:
    """The error propagating where this is called (from a ``finally``), if any; not a
    ``GeneratorExit``: a stream closed by its consumer ended well."""
    error = sys.exc_info()[1]
    return error if isinstance(error, Exception) else None


class _WatchedStream:
    """What both kinds of watched stream share: anything not watched is the SDK stream's
    own, and the call is recorded, at the latest, when the stream is collected."""

    def __init__(self, stream: Any, observer: Observer, call: Call) -> None:
        self._stream = stream
        self._observer = observer
        self._call = call
        _record_on_close(getattr(stream, "response", None), call, observer)

    def _finish(self) -> None:
        record_seen(self._call, self._observer)

    def __del__(self) -> None:
        record_collected(self._call, self._observer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """The SDK stream's class, for ``isinstance``: host code tells a streamed answer
        from a whole one by ``isinstance(answer, openai.Stream)`` (``type()`` still tells
        the wrapper)."""
        return type(self._stream)


class SyncStream(_WatchedStream):
    """The SDK's stream, watched; anything else is the SDK stream's own."""

    def __init__(self, stream: Any, observer: Observer, call: Call) -> None:
        super().__init__(stream, observer, call)
        self._items = watch(stream, observer, call)

    def __iter__(self) -> Iterator[Any]:
        # Itself, not its generator: ``for item in client...create(stream=True)`` keeps no
        # other reference to the stream, which would be collected (and record what it had
        # seen: nothing) as the loop began.
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._items.close()
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()
        self._finish()


class AsyncStream(_WatchedStream):
    """The SDK's async stream, watched; anything else is the SDK stream's own."""

    def __init__(self, stream: Any, observer: Observer, call: Call) -> None:
        super().__init__(stream, observer, call)
        self._items = watch_async(stream, observer, call)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self  # as SyncStream.__iter__

    async def __anext__(self) -> Any:
        return await self._items.__anext__()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._items.aclose()
        close = getattr(self._stream, "aclose", None) or getattr(self._stream, "close", None)
        if close is not None:
            closing = close()
            if inspect.isawaitable(closing):
                await closing
        self._finish()

    aclose = close
