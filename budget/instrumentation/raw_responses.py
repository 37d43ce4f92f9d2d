"""The answers the SDK gives raw (``with_raw_response``, ``with_streaming_response``):
measured from their parsed body, and their streams watched as the SDK parsed them.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from budget.instrumentation.lifecycle import Call, Measured, Plan
from budget.instrumentation.methods import Method, estimated, measure_response, stream_observer
from budget.instrumentation.streams import record_collected, watch, watch_async

__all__ = ["RAW_BODY", "raw_mode", "record_raw", "record_raw_async"]

log = logging.getLogger(__name__)

_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
"""Set by the openai and anthropic SDKs' ``with_raw_response`` ("true" in openai's, "raw"
in anthropic's) and ``with_streaming_response`` ("stream"): the call answers with the
HTTP response, whose ``parse()`` gives what the call would have returned, and keeps it
for the caller's own ``parse()``: parsing it here costs the caller nothing."""
_RAW_PARSED = "raw"
RAW_BODY = "stream"
_RAW_MODES = {"true": _RAW_PARSED, "raw": _RAW_PARSED, "stream": RAW_BODY}
"""``with_streaming_response``: the caller may read the HTTP body itself; a stream's
request is then sent as asked (no ``include_usage`` added: nothing could keep its
chunk from the caller)."""

_UNREAD_STREAM = (
    "a stream asked for through with_streaming_response: its caller reads the HTTP body,"
    " the instrumentation cannot"
)
_warned_unread_stream: set[str] = set()


def raw_mode(kwargs: MutableMapping[str, Any]) -> str | None:
    """How the call answers raw (``RAW_BODY`` when its caller reads the HTTP body), or
    None when it answers as the SDK's method does."""
    headers = kwargs.get("extra_headers")
    mode = headers.get(_RAW_RESPONSE_HEADER) if isinstance(headers, Mapping) else None
    return _RAW_MODES.get(mode) if isinstance(mode, str) else None


def record_raw(mode: str, response: Any, method: Method, call: Call) -> None:
    """Record a call answered raw (``mode``, from ``raw_mode``); its stream, when it
    returns one the caller parses, as that stream is read."""
    try:
        if not call.plan.stream:
            call.record(_measure_raw(method, call.plan, response))
        elif mode == _RAW_PARSED:
            _watch_parsed(response, method, call)
        else:
            call.record(_unread_stream(call))
    except BaseException:
        call.record(_interrupted(call.plan))
        raise


async def record_raw_async(mode: str, response: Any, method: Method, call: Call) -> None:
    """``record_raw`` for the SDKs' async responses."""
    try:
        if not call.plan.stream:
            call.record(await _measure_raw_async(method, call.plan, response))
        elif mode == _RAW_PARSED:
            await _watch_parsed_async(response, method, call)
        else:
            call.record(_unread_stream(call))
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


def _unread_stream(call: Call) -> Measured:
    """The pre-call estimate (the whole output allowance, so it errs high), said once."""
    if call.provider not in _warned_unread_stream:
        _warned_unread_stream.add(call.provider)
        log.warning("%s: %s; recording the pre-call estimate", call.provider, _UNREAD_STREAM)
    return estimated(call.plan, _UNREAD_STREAM)
