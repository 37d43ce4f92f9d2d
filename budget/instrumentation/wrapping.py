"""Replacing an SDK method on one client with the instrumented one, and the streams it
returns with ones that watch their items go by.

A stream records its call once, at the first of: its end, an error inside it, ``close``
(or leaving its ``with`` block), or its collection by the garbage collector, whatever it
has seen by then: a stream abandoned half-way is still charged for what it consumed. A
stream that fails before its first item releases the reservation instead.

Also here: the SDK stream helpers that send their request on entering a ``with`` block
(checked there), the clients the SDK copies from an instrumented one (instrumented
alike), and the answers the SDK gives raw (``with_raw_response``), measured from their
parsed body.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass
from typing import Any, Protocol

from budget.instrumentation.lifecycle import Attribution, Call, Lifecycle, Measured, Plan
from budget.instrumentation.prompts import estimated_tokens
from budget.usage import usage_from_response
from events import Usage

__all__ = [
    "AsyncStream",
    "Method",
    "Observer",
    "SyncStream",
    "UsageObserver",
    "estimated",
    "patch",
    "patch_copies",
    "patch_stream_manager",
]

log = logging.getLogger(__name__)

_MARK = "__budget_instrumented__"


class Observer(Protocol):
    """Follows one stream's items and tells the call's usage from what it saw."""

    def see(self, item: Any) -> bool:
        """Take note of ``item``; False: the caller must not see it (it was asked for
        by the instrumentation only)."""
        ...

    def measured(self) -> Measured: ...


@dataclass(frozen=True, slots=True)
class Method:
    """How to instrument one SDK method: the plan from its keywords (which it may adjust
    for the tracker), the usage from its response, and for a streaming call, its observer."""

    plan: Callable[[MutableMapping[str, Any]], Plan]
    measure: Callable[[Any, Plan], Measured]
    observe: Callable[[Plan], Observer] | None = None


class UsageObserver:
    """For streams whose usage comes whole in an item (OpenAI's last chunk or
    ``response.completed``, each Gemini chunk): ``see`` keeps the latest ``usage`` and
    ``model`` and counts the text ``chars`` passing by, so a stream cut short before its
    usage is charged the prompt and the text received, estimated."""

    cut_short = "the stream ended before its usage arrived"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.usage: Any = None
        self.model: str | None = None
        self.chars = 0

    def measured(self) -> Measured:
        if self.usage is not None:
            return Measured(usage_from_response(self.usage), self.model)
        usage = Usage(
            input_uncached=self.plan.prompt_tokens, output_text=estimated_tokens(self.chars)
        )
        why = f"{self.cut_short}: the prompt and the text received, estimated"
        return Measured(usage, self.model, why)


def estimated(plan: Plan, why: str) -> Measured:
    """The plan's estimate, as the usage of a call whose response tells none."""
    usage = plan.estimate or Usage(
        input_uncached=plan.prompt_tokens, output_text=plan.max_output_tokens
    )
    return Measured(usage, estimated_reason=f"{why}; recorded the pre-call estimate")


def _measure(method: Method, response: Any, plan: Plan) -> Measured:
    try:
        return method.measure(response, plan)
    except (ValueError, AttributeError, TypeError, LookupError) as exc:
        return estimated(plan, f"no usable usage in the response ({exc})"[:400])


def _observer(method: Method, plan: Plan) -> Observer:
    if method.observe is None:
        raise TypeError("this method does not stream")
    return method.observe(plan)


def patch(
    owner: object, name: str, lifecycle: Lifecycle, method: Method, *, asynchronous: bool
) -> None:
    """Replace ``owner.name`` (on this object only) with the instrumented method; a second
    ``patch`` of the same method keeps the first. ``asynchronous``: the method returns an
    awaitable (the SDKs' decorators hide that from ``inspect``)."""
    make = _async_method if asynchronous else _sync_method
    _replace(owner, name, lambda original: make(original, lifecycle, method))


def patch_stream_manager(
    owner: object, name: str, lifecycle: Lifecycle, method: Method, *, asynchronous: bool
) -> None:
    """Replace ``owner.name``, an SDK stream helper (Anthropic's ``messages.stream``): it
    returns a manager whose ``with`` block sends the request and gives a helper object
    that reads the SDK's raw stream from its ``_raw_stream``. The budget is checked on
    entering the block, before the request; the raw stream is watched as
    ``create(stream=True)``'s is, so every way of reading the helper is counted."""
    manager = _AsyncManager if asynchronous else _SyncManager

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def instrumented(*args: Any, **kwargs: Any) -> Any:
            attribution = lifecycle.attribution_for(kwargs)
            plan = method.plan(kwargs)
            # The SDK's manager is made on entry, once the budget admits the call: an async
            # one holds the request's coroutine, never awaited if the call were refused.
            return manager(
                functools.partial(original, *args, **kwargs), lifecycle, method, plan, attribution
            )

        return instrumented

    _replace(owner, name, make)


def patch_copies(client: object, install: Callable[[Any], None]) -> None:
    """The SDK's ``copy`` / ``with_options`` (and what calls them, as Anthropic's
    ``with_middleware``) make a new client: ``install`` instruments it as this one."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def copied(*args: Any, **kwargs: Any) -> Any:
            copy = original(*args, **kwargs)
            install(copy)
            return copy

        return copied

    for name in ("copy", "with_options"):
        _replace(client, name, make)


def _replace(
    owner: object, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    original = getattr(owner, name)
    if getattr(original, _MARK, False):
        return
    wrapper = make(original)
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)


def _sync_method(
    original: Callable[..., Any], lifecycle: Lifecycle, method: Method
) -> Callable[..., Any]:
    def instrumented(*args: Any, **kwargs: Any) -> Any:
        attribution = lifecycle.attribution_for(kwargs)
        raw = _raw_mode(kwargs)
        plan = method.plan(dict(kwargs) if raw == _RAW_BODY else kwargs)
        call = lifecycle.begin_sync(plan, attribution)
        try:
            response = original(*args, **kwargs)
        except BaseException:
            call.release()
            raise
        if raw is None and plan.stream:
            return SyncStream(response, _observer(method, plan), call)
        if raw is None:
            call.record(_measure(method, response, plan))
        elif not plan.stream:
            call.record(_measure_raw(method, plan, response))
        elif raw == _RAW_PARSED:
            _watch_parsed(response, method, call)
        else:
            call.record(_unread_stream(call))
        return response

    return instrumented


def _async_method(
    original: Callable[..., Awaitable[Any]], lifecycle: Lifecycle, method: Method
) -> Callable[..., Awaitable[Any]]:
    async def instrumented(*args: Any, **kwargs: Any) -> Any:
        attribution = lifecycle.attribution_for(kwargs)
        raw = _raw_mode(kwargs)
        plan = method.plan(dict(kwargs) if raw == _RAW_BODY else kwargs)
        call = await lifecycle.begin(plan, attribution)
        try:
            response = await original(*args, **kwargs)
        except BaseException:
            call.release()
            raise
        if raw is None and plan.stream:
            return AsyncStream(response, _observer(method, plan), call)
        if raw is None:
            call.record(_measure(method, response, plan))
        elif not plan.stream:
            call.record(await _measure_raw_async(method, plan, response))
        elif raw == _RAW_PARSED:
            await _watch_parsed_async(response, method, call)
        else:
            call.record(_unread_stream(call))
        return response

    return instrumented


_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
"""Set by the openai and anthropic SDKs' ``with_raw_response`` ("true" in openai's, "raw"
in anthropic's) and ``with_streaming_response`` ("stream"): the call answers with the
HTTP response, whose ``parse()`` gives what the call would have returned, and keeps it
for the caller's own ``parse()``: parsing it here costs the caller nothing."""
_RAW_PARSED = "raw"
_RAW_BODY = "stream"
_RAW_MODES = {"true": _RAW_PARSED, "raw": _RAW_PARSED, "stream": _RAW_BODY}
"""``with_streaming_response``: the caller may read the HTTP body itself; a stream's
request is then sent as asked (no ``include_usage`` added: nothing could keep its
chunk from the caller)."""

_UNREAD_STREAM = (
    "a stream asked for through with_streaming_response: its caller reads the HTTP body,"
    " the instrumentation cannot"
)
_warned_unread_stream: set[str] = set()


def _raw_mode(kwargs: MutableMapping[str, Any]) -> str | None:
    headers = kwargs.get("extra_headers")
    mode = headers.get(_RAW_RESPONSE_HEADER) if isinstance(headers, Mapping) else None
    return _RAW_MODES.get(mode) if isinstance(mode, str) else None


def _measure_raw(method: Method, plan: Plan, response: Any) -> Measured:
    try:
        body = response.parse()
    except Exception as exc:  # the caller's own parse() will say what is wrong
        return _unparsed(plan, exc)
    return _measure(method, body, plan)


async def _measure_raw_async(method: Method, plan: Plan, response: Any) -> Measured:
    try:
        body = await _parsed_async(response)
    except Exception as exc:
        return _unparsed(plan, exc)
    return _measure(method, body, plan)


async def _parsed_async(response: Any) -> Any:
    body = response.parse()  # a coroutine for the SDKs' async responses, not the legacy ones
    return await body if inspect.isawaitable(body) else body


def _unparsed(plan: Plan, exc: Exception) -> Measured:
    return estimated(plan, f"the raw response could not be parsed ({exc})"[:400])


def _watch_parsed(response: Any, method: Method, call: Call) -> None:
    try:
        stream = response.parse()
    except Exception as exc:
        call.record(_unparsed(call.plan, exc))
        return
    _watch_raw_stream(stream, _watch, method, call)


async def _watch_parsed_async(response: Any, method: Method, call: Call) -> None:
    try:
        stream = await _parsed_async(response)
    except Exception as exc:
        call.record(_unparsed(call.plan, exc))
        return
    _watch_raw_stream(stream, _watch_async, method, call)


def _watch_raw_stream(stream: Any, watch: Callable[..., Any], method: Method, call: Call) -> None:
    """A ``with_raw_response`` stream: the SDK stream its ``parse()`` made, and keeps for
    the caller's own ``parse()``, reads its items through the watch. Never read, it is
    recorded when collected."""
    observer = _observer(method, call.plan)
    try:
        stream._iterator = watch(stream._iterator, observer, call)
        weakref.finalize(stream, _finish, call, observer)
    except (AttributeError, TypeError) as exc:  # an SDK whose streams are made otherwise
        call.record(estimated(call.plan, f"the raw stream could not be watched ({exc})"))


def _unread_stream(call: Call) -> Measured:
    """The pre-call estimate (the whole output allowance, so it errs high), said once."""
    if call.provider not in _warned_unread_stream:
        _warned_unread_stream.add(call.provider)
        log.warning("%s: %s; recording the pre-call estimate", call.provider, _UNREAD_STREAM)
    return estimated(call.plan, _UNREAD_STREAM)


def _finish(call: Call, observer: Observer) -> None:
    """Record what the stream saw (once): never raises, the stream's consumer must not
    see the tracker's trouble."""
    if call.settled:
        return
    try:
        measured = observer.measured()
    except (ValueError, AttributeError, TypeError, LookupError) as exc:
        measured = estimated(call.plan, f"no usable usage in the stream ({exc})"[:400])
    call.record(measured)


def _watch(stream: Any, observer: Observer, call: Call) -> Generator[Any, None, None]:
    # Not a method: a generator holding its stream object would make a reference cycle,
    # and an abandoned stream would wait for the cycle collector to be recorded.
    seen = False
    try:
        for item in stream:
            seen = True
            if observer.see(item):
                yield item
    except Exception:
        if not seen:  # the request itself failed (a generator sends it on first use)
            call.release()
        raise
    finally:
        _finish(call, observer)


async def _watch_async(stream: Any, observer: Observer, call: Call) -> AsyncGenerator[Any, None]:
    seen = False
    try:
        async for item in stream:
            seen = True
            if observer.see(item):
                yield item
    except Exception:
        if not seen:
            call.release()
        raise
    finally:
        _finish(call, observer)


class SyncStream:
    """The SDK's stream, watched; anything else is the SDK stream's own."""

    def __init__(self, stream: Any, observer: Observer, call: Call) -> None:
        self._stream = stream
        self._observer = observer
        self._call = call
        self._items = _watch(stream, observer, call)

    def _finish(self) -> None:
        _finish(self._call, self._observer)

    def __iter__(self) -> Iterator[Any]:
        return self._items

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

    def __del__(self) -> None:
        self._finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class AsyncStream:
    """The SDK's async stream, watched; anything else is the SDK stream's own."""

    def __init__(self, stream: Any, observer: Observer, call: Call) -> None:
        self._stream = stream
        self._observer = observer
        self._call = call
        self._items = _watch_async(stream, observer, call)

    def _finish(self) -> None:
        _finish(self._call, self._observer)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items

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

    def __del__(self) -> None:
        self._finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Manager:
    """An SDK stream manager, made and entered once the budget admits the call."""

    def __init__(
        self,
        make: Callable[[], Any],
        lifecycle: Lifecycle,
        method: Method,
        plan: Plan,
        attribution: Attribution,
    ) -> None:
        self._make = make
        self._lifecycle = lifecycle
        self._method = method
        self._plan = plan
        self._attribution = attribution
        self._manager: Any = None


class _SyncManager(_Manager):
    def __enter__(self) -> Any:
        call = self._lifecycle.begin_sync(self._plan, self._attribution)
        try:
            self._manager = self._make()
            helper = self._manager.__enter__()
        except BaseException:
            call.release()
            raise
        observer = _observer(self._method, self._plan)
        helper._raw_stream = SyncStream(helper._raw_stream, observer, call)
        return helper

    def __exit__(self, *exc: Any) -> Any:
        return self._manager.__exit__(*exc)


class _AsyncManager(_Manager):
    async def __aenter__(self) -> Any:
        call = await self._lifecycle.begin(self._plan, self._attribution)
        try:
            self._manager = self._make()
            helper = await self._manager.__aenter__()
        except BaseException:
            call.release()
            raise
        observer = _observer(self._method, self._plan)
        helper._raw_stream = AsyncStream(helper._raw_stream, observer, call)
        return helper

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._manager.__aexit__(*exc)
