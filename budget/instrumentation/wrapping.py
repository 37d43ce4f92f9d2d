"""Replacing an SDK method on one client with the instrumented one (``patch``), and the
clients the SDK copies from an instrumented one with clients instrumented alike
(``patch_copies``).

What the instrumented method returns is the SDK's answer, but for a stream: one that
watches its items (``streams``). An answer the SDK gives raw is measured from its body
(``raw_responses``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from budget.instrumentation.lifecycle import Lifecycle
from budget.instrumentation.methods import Method, measure_response, stream_observer
from budget.instrumentation.raw_responses import raw_mode, record_raw, record_raw_async
from budget.instrumentation.streams import AsyncStream, SyncStream

__all__ = ["patch", "patch_copies", "replace", "untracked"]

log = logging.getLogger(__name__)
_MARK = "__budget_instrumented__"
_warned: set[str] = set()


def patch(
    owner: object, name: str, lifecycle: Lifecycle, method: Method, *, asynchronous: bool
) -> None:
    """Replace ``owner.name`` (on this object only) with the instrumented method; a second
    ``patch`` of the same method keeps the first. ``asynchronous``: the method returns an
    awaitable (the SDKs' decorators hide that from ``inspect``)."""
    make = _async_method if asynchronous else _sync_method
    replace(owner, name, lambda original: make(original, lifecycle, method))


def untracked(owner: object, name: str, label: str, why: str) -> None:
    """Leave the paid method ``owner.name`` as it is, but warn at its first call in the
    process that what it costs is not recorded (``label``: what is called; ``why``), so
    spending nothing counts is never silent."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def passed_through(*args: Any, **kwargs: Any) -> Any:
            if label not in _warned:
                _warned.add(label)
                log.warning(
                    "budget: %s calls are not recorded (%s): what they cost is in no"
                    " total or limit; see docs/instrument.md#not-recorded",
                    label,
                    why,
                )
            return original(*args, **kwargs)

        return passed_through

    replace(owner, name, make)


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
        replace(client, name, make)


def replace(
    owner: object, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    """Set ``owner.name`` to ``make(original)``, unless it is already one so made."""
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
        raw = raw_mode(kwargs)
        plan = method.plan(kwargs)
        call = lifecycle.begin_sync(plan, attribution)
        try:
            response = original(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        if raw is None and plan.stream:
            return SyncStream(response, stream_observer(method, plan), call)
        if raw is None:
            call.record(measure_response(method, response, plan))
        else:
            record_raw(raw, response, method, call)
        return response

    return instrumented


def _async_method(
    original: Callable[..., Awaitable[Any]], lifecycle: Lifecycle, method: Method
) -> Callable[..., Awaitable[Any]]:
    async def instrumented(*args: Any, **kwargs: Any) -> Any:
        attribution = lifecycle.attribution_for(kwargs)
        raw = raw_mode(kwargs)
        plan = method.plan(kwargs)
        call = await lifecycle.begin(plan, attribution)
        try:
            response = await original(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        if raw is None and plan.stream:
            return AsyncStream(response, stream_observer(method, plan), call)
        if raw is None:
            call.record(measure_response(method, response, plan))
        else:
            await record_raw_async(raw, response, method, call)
        return response

    return instrumented
