"""The answers the SDK gives raw (``with_raw_response``, ``with_streaming_response``):
measured from their parsed body, and their streams watched as the SDK parsed them; or,
when the caller reads the body itself, measured as it reads it (``raw_bodies``).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from budget.instrumentation.lifecycle import Call, Measured, Plan
from budget.instrumentation.methods import Method, estimated, measure_response, stream_observer
from budget.instrumentation.raw_bodies import watch_body
from budget.instrumentation.streams import record_collected, watch, watch_async

__all__ = ["raw_mode", "record_raw", "record_raw_async"]

_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
"""Set by the openai and anthropic SDKs' ``with_raw_response`` ("true" in openai's, "raw"
in anthropic's) and ``with_streaming_response`` ("stream"): the call answers with the
HTTP response, whose ``parse()`` gives what the call would have returned, and keeps it
for the caller's own ``parse()``: parsing it here costs the caller nothing."""
_RAW_PARSED = "raw"
_RAW_BODY = "stream"
"""``with_streaming_response``: the answer's body is not read yet; the caller reads it."""
_RAW_MODES = {"true": _RAW_PARSED, "raw": _RAW_PARSED, "stream": _RAW_BODY}


def raw_mode(kwargs: MutableMapping[str, Any]) -> str | None:
    """How the call answers raw, or None when it answers as the SDK's method does."""
    headers = kwargs.get("extra_headers")
    mode = headers.get(_RAW_RESPONSE_HEADER) if isinstance(headers, Mapping) else None
    return _RAW_MODES.get(mode) if isinstance(mode, str) else None


def record_raw(mode: str, response: Any, method: Method, call: Call) -> None:
    """Record a call answered raw (``mode``, from ``raw_mode``); its stream, when it
    returns one the caller parses, as that stream is read; an answer whose body its caller
    reads, as that body is read."""
    if mode == _RAW_BODY:
        watch_body(response, method, call, asynchronous=False)
        return
    try:
        if not call.plan.stream:
            call.record(_measure_raw(method, call.plan, response))
        else:
            _watch_parsed(response, method, call)
    except BaseException:
        call.record(_interrupted(call.plan))
        raise


async def record_raw_async(mode: str, response: Any, method: Method, call: Call) -> None:
    """``record_raw`` for the SDKs' async responses."""
    if mode == _RAW_BODY:
        watch_body(response, method, call, asynchronous=True)
        return
    try:
        if not call.plan.stream:
            call.record(await _measure_raw_async(method, call.plan, response))
        else:
            await _watch_parsed_async(response, method, call)
    except BaseException:
        call.record(_interrupted(call.plan))
        raise


def _interrupted(plan: Plan) -> Measured:
    """A call cancelled (or interrupted) while its answer was read: the provider has
    answered, and is paid, whatever the caller does next (a record made already stands)."""
    return estimated(plan, "cancelled while its answer was read")


def _measure_raw(method: Method, plan: Plan, response: Any) -> Measured:
    try:
        body = response.parse()
    except Exception as exc:  # the caller's own parse() will say what is wrong
        return _unparsed(plan, exc)
    return measure_response(method, body, plan)


async def _measure_raw_async(method: Method, plan: Plan, response: Any) -> Measured:
    try:
        body = await _parsed_async(response)
    except Exception as exc:
        return _unparsed(plan, exc)
    return measure_response(method, body, plan)


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
    _watch_raw_stream(stream, watch, method, call)


async def _watch_parsed_async(response: Any, method: Method, call: Call) -> None:
    try:
        stream = await _parsed_async(response)
    except Exception as exc:
        call.record(_unparsed(call.plan, exc))
        return
    _watch_raw_stream(stream, watch_async, method, call)


def _watch_raw_stream(stream: Any, watcher: Callable[..., Any], method: Method, call: Call) -> None:
    """A ``with_raw_response`` stream: the SDK stream its ``parse()`` made, and keeps for
    the caller's own ``parse()``, reads its items through ``watcher``. Never read, it is
    recorded when collected."""
    observer = stream_observer(method, call.plan)
    try:
        stream._iterator = watcher(stream._iterator, observer, call)
        weakref.finalize(stream, record_collected, call, observer)
    except (AttributeError, TypeError) as exc:  # an SDK whose streams are made otherwise
        call.record(estimated(call.plan, f"the raw stream could not be watched ({exc})"))
