"""The answers the SDK gives raw (``with_raw_response``, ``with_streaming_response``):
measured from their parsed body when the SDK read it whole (``with_raw_response``'s JSON
answers), else as their caller reads it (``raw_bodies``): a stream's, however it is read
(the SDK stream ``parse()`` gives, or the HTTP response's lines or bytes).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, MutableMapping
from typing import Any

from budget.instrumentation.lifecycle import Call, Measured, Plan
from budget.instrumentation.methods import Method, estimated, measure_response
from budget.instrumentation.raw_bodies import watch_body

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
    """Record a call answered raw (``mode``, from ``raw_mode``): from its parsed body, or
    as its caller reads its body."""
    if mode == _RAW_BODY or call.plan.stream:
        watch_body(response, method, call, asynchronous=False)
        return
    try:
        call.record(_measure_raw(method, call.plan, response))
    except BaseException:
        call.record(_interrupted(call.plan))
        raise


async def record_raw_async(mode: str, response: Any, method: Method, call: Call) -> None:
    """``record_raw`` for the SDKs' async responses."""
    if mode == _RAW_BODY or call.plan.stream:
        watch_body(response, method, call, asynchronous=True)
        return
    try:
        call.record(await _measure_raw_async(method, call.plan, response))
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
