"""The answers whose HTTP body the caller reads itself (``with_streaming_response``):
the body watched as it is read, however it is read (the SDK's ``parse()``, ``read()``,
``json()``, ``iter_bytes()``, ``iter_text()``, ``iter_lines()``: all read it through the
HTTP response's ``iter_bytes``/``aiter_bytes``), and the call recorded from the usage in it.

A JSON answer is measured from its body once read whole. An SSE stream's events are made
into the SDK's items as they pass and shown to the observer ``create(stream=True)``'s
stream has; the usage chunk the instrumentation asked for (OpenAI's ``include_usage``)
is left out of the bytes the caller reads, so it reads the stream it asked for.

The call is recorded once, at the first of: the body's end, an error reading it, the
response closed (leaving the ``with`` block) or collected. A body not read whole records
what it told: a stream what it showed (as a stream abandoned half-way), a JSON answer the
pre-call estimate; a stream failing before its first event releases the reservation.
"""

from __future__ import annotations

import contextvars
import json
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from budget.instrumentation.lifecycle import Call, Measured, Plan
from budget.instrumentation.methods import (
    Method,
    Observer,
    estimated,
    measure_response,
    stream_observer,
)
from budget.instrumentation.sse_events import EventSplitter, event_fields

__all__ = ["watch_body"]


def watch_body(response: Any, method: Method, call: Call, *, asynchronous: bool) -> None:
    """Record ``call`` from the body of ``response`` (an SDK's ``APIResponse`` answered
    with its body unread) as its caller reads it."""
    plan = call.plan
    try:
        http = response.http_response
        body: _Body
        if plan.stream:
            # The SDK's stream of this response, never read: the type of its items.
            items = _Items(response, response._parse()._cast_to)
            body = _SseBody(items, stream_observer(method, plan), plan)
        else:
            body = _JsonBody(_Items(response, response._cast_to), method, plan)
        watch = _BodyWatch(call, body)
        if hasattr(http, "_content"):  # read already (a transport that answers whole)
            http._content = watch.read_whole(http._content)
            return
        (_install_async if asynchronous else _install_sync)(http, watch, plan.strip_usage_chunk)
    except Exception as exc:  # an SDK whose responses are made otherwise: the call is paid
        call.record(estimated(plan, f"the raw answer's body could not be watched ({exc})"))
        return
    weakref.finalize(http, _collected, watch)


class _Items:
    """The SDK's objects of a body's JSON, made as its own ``parse()`` makes them."""

    def __init__(self, response: Any, cast_to: Any) -> None:
        self._process = response._client._process_response_data
        self._cast_to = cast_to
        # Weak: the finaliser recording a response never read holds this, not the response.
        self._http = weakref.ref(response.http_response)

    def __call__(self, data: object) -> Any:
        return self._process(data=data, cast_to=self._cast_to, response=self._http())


class _Body(Protocol):
    began: bool
    """Whether any of the answer arrived: a stream failing before its first event never
    answered (its hold is released), a JSON answer's status line told it was made."""
    error: StreamError | None
    """An error the body told before any answer (a stream's error event)."""

    def feed(self, data: bytes) -> bytes:
        """Take note of ``data``, read from the body; what the caller is to read of it."""
        ...

    def end(self) -> bytes:
        """The body has ended: what the caller is still to read."""
        ...

    def measured(self, interrupted: BaseException | None) -> Measured: ...


class StreamError(Exception):
    """A stream that told an error (the SDK raises it to the caller as its own)."""


class _JsonBody:
    began = True
    error: StreamError | None = None

    def __init__(self, items: _Items, method: Method, plan: Plan) -> None:
        self._items, self._method, self._plan = items, method, plan
        self._parts: list[bytes] = []
        self._ended = False

    def feed(self, data: bytes) -> bytes:
        self._parts.append(data)
        return data

    def end(self) -> bytes:
        self._ended = True
        return b""

    def measured(self, interrupted: BaseException | None) -> Measured:
        if not self._ended:
            why = "its body was not read whole"
            if interrupted is not None:
                why += f" ({type(interrupted).__name__} while it was read)"
            return estimated(self._plan, why)
        try:
            answer = self._items(json.loads(b"".join(self._parts)))
        except Exception as exc:  # not JSON, or not the SDK's shape: the caller's parse() says
            return estimated(self._plan, f"its body could not be parsed ({exc})"[:400])
        return measure_response(self._method, answer, self._plan)


class _SseBody:
    def __init__(self, items: _Items, observer: Observer, plan: Plan) -> None:
        self._items, self._observer, self._plan = items, observer, plan
        self._strip = plan.strip_usage_chunk
        self._events = EventSplitter()
        self.began = False
        self.error: StreamError | None = None

    def feed(self, data: bytes) -> bytes:
        kept = bytearray()
        for event in self._events.feed(data):
            if self._see(event) or not self._strip:
                kept += event
        # Unless an event may be left out, the bytes pass as they came, not held back.
        return bytes(kept) if self._strip else data

    def end(self) -> bytes:
        # An event the body ended without the blank line that would close it: the SSE
        # format drops it, as the SDK does; it is the caller's to read all the same.
        rest = self._events.rest()
        return rest if self._strip else b""

    def _see(self, event: bytes) -> bool:
        """Show the event's item to the observer; False: the caller must not read it."""
        name, data = event_fields(event)
        if not data or name == "ping" or data.startswith("[DONE]"):
            return True
        try:
            document = json.loads(data)
        except ValueError:
            document = None
        if name == "error" or (isinstance(document, dict) and "error" in document):
            # Anthropic's `event: error` (overloaded), OpenAI's {"error": ...}: the SDK
            # raises it to the caller; before any answer, nothing was made
            self.error = self.error or StreamError(f"the stream told an error: {data[:300]}")
            return True
        self.began = True
        try:
            return self._observer.see(self._items(document))
        except Exception:  # an event the SDK's parse() would refuse: the caller's to read
            return True

    def measured(self, interrupted: BaseException | None) -> Measured:
        try:
            return self._observer.measured()
        except (ValueError, AttributeError, TypeError, LookupError) as exc:
            return estimated(self._plan, f"no usable usage in the stream ({exc})"[:400])


class _BodyWatch:
    """One answer's body as its caller reads it; the call recorded once from it."""

    def __init__(self, call: Call, body: _Body) -> None:
        self.call = call
        self.body = body
        self.pulling = False
        """Waiting for the body's next bytes: the HTTP response closes itself there as
        the body ends, before the last of it is taken note of."""

    def settle(self, interrupted: BaseException | None = None) -> None:
        call = self.call
        if call.settled:
            return
        error = interrupted if isinstance(interrupted, Exception) else None
        failure = error or self.body.error
        if failure is not None and not self.body.began:
            call.fail(failure)  # as a stream failing before its first item: never answered
            return
        call.record(self.body.measured(interrupted), error)

    def closed(self) -> None:
        """The HTTP response was closed: by its caller (leaving the ``with`` block, with
        the body unread or half read), or by itself as its body ended, while it was read
        (its reader then records)."""
        if not self.pulling:
            self.settle()

    def read_whole(self, content: bytes) -> bytes:
        """Record the call from a body read whole; what the caller is to read of it."""
        kept = self.body.feed(content) + self.body.end()
        self.settle()
        return kept

    def read(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        interrupted: BaseException | None = None
        try:
            while True:
                self.pulling = True
                try:
                    piece = next(pieces)
                except StopIteration:
                    break
                finally:
                    self.pulling = False
                if kept := self.body.feed(piece):
                    yield kept
            if tail := self.body.end():
                yield tail
        except GeneratorExit:  # the caller stopped reading: what it read is recorded
            raise
        except BaseException as exc:
            interrupted = exc
            raise
        finally:
            self.settle(interrupted)

    async def read_async(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        interrupted: BaseException | None = None
        try:
            while True:
                self.pulling = True
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    break
                finally:
                    self.pulling = False
                if kept := self.body.feed(piece):
                    yield kept
            if tail := self.body.end():
                yield tail
        except GeneratorExit:
            raise
        except BaseException as exc:
            interrupted = exc
            raise
        finally:
            self.settle(interrupted)


def _install_sync(http: Any, watch: _BodyWatch, regrouped: bool) -> None:
    """``regrouped``: the caller's bytes may leave an event out, so their ``chunk_size``
    is made again from what is kept."""
    iter_bytes, close = http.iter_bytes, http.close

    def watched_iter_bytes(chunk_size: int | None = None) -> Iterator[bytes]:
        if hasattr(http, "_content"):  # read whole before: seen then
            return iter_bytes(chunk_size)  # type: ignore[no-any-return]
        if not regrouped:
            return watch.read(iter_bytes(chunk_size))
        return _in_chunks(watch.read(iter_bytes()), chunk_size)

    def watched_close() -> None:
        try:
            close()
        finally:
            watch.closed()

    http.iter_bytes, http.close = watched_iter_bytes, watched_close


def _install_async(http: Any, watch: _BodyWatch, regrouped: bool) -> None:
    """``_install_sync`` for an async client's response."""
    aiter_bytes, aclose = http.aiter_bytes, http.aclose

    def watched_aiter_bytes(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        if hasattr(http, "_content"):
            return aiter_bytes(chunk_size)  # type: ignore[no-any-return]
        if not regrouped:
            return watch.read_async(aiter_bytes(chunk_size))
        return _in_chunks_async(watch.read_async(aiter_bytes()), chunk_size)

    async def watched_aclose() -> None:
        try:
            await aclose()
        finally:
            watch.closed()

    http.aiter_bytes, http.aclose = watched_aiter_bytes, watched_aclose


def _in_chunks(pieces: Iterator[bytes], size: int | None) -> Iterator[bytes]:
    """``pieces`` as chunks of ``size`` bytes (the last one shorter), as ``iter_bytes``
    gives them; as they come when ``size`` is None."""
    if size is None:
        yield from pieces
        return
    held = b""
    for piece in pieces:
        held += piece
        while len(held) >= size:
            chunk, held = held[:size], held[size:]
            yield chunk
    if held:
        yield held


async def _in_chunks_async(pieces: AsyncIterator[bytes], size: int | None) -> AsyncIterator[bytes]:
    """``_in_chunks`` for an async body."""
    held = b""
    async for piece in pieces:
        if size is None:
            yield piece
            continue
        held += piece
        while len(held) >= size:
            chunk, held = held[:size], held[size:]
            yield chunk
    if held:
        yield held


def _collected(watch: _BodyWatch) -> None:
    """A response collected unclosed: in an empty context, as ``record_collected``."""
    contextvars.Context().run(watch.settle)
