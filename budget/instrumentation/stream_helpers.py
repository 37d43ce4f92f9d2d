"""The SDK stream helpers that send their request on entering a ``with`` block: Anthropic's
``messages.stream`` (the budget is checked there, and the stream it reads is watched),
and OpenAI's ``stream`` helpers, which send theirs through an instrumented ``create``
(the call's ``budget_*`` keywords and ``attribute_to`` blocks held for it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from budget.instrumentation.lifecycle import (
    Attribution,
    Call,
    Lifecycle,
    Plan,
    call_scope,
    in_scope,
)
from budget.instrumentation.methods import Method, stream_observer
from budget.instrumentation.streams import AsyncStream, SyncStream
from budget.instrumentation.wrapping import replace

__all__ = ["patch_scope_held", "patch_stream_manager"]


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

    replace(owner, name, make)


def patch_scope_held(owner: object, name: str) -> None:
    """Let ``owner.name``, an SDK stream helper whose manager sends its request through an
    instrumented method as its ``with`` block is entered (OpenAI's ``stream``), take the
    ``budget_*`` keywords (the SDK's own signature refuses them): they, over the
    ``attribute_to`` blocks the helper is called in, are the scope the request is sent in,
    wherever the block is entered."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def scoped(*args: Any, **kwargs: Any) -> Any:
            scope = call_scope(kwargs)
            manager = original(*args, **kwargs)
            return manager if scope is None else _ScopeHeld(manager, scope)

        return scoped

    replace(owner, name, make)


class _ScopeHeld:
    """An SDK stream manager entered in ``scope``; anything else is the manager's own."""

    def __init__(self, manager: Any, scope: Attribution) -> None:
        self._manager, self._scope = manager, scope

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)

    def __enter__(self) -> Any:
        with in_scope(self._scope):
            return self._manager.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._manager.__exit__(*exc)

    async def __aenter__(self) -> Any:
        with in_scope(self._scope):
            return await self._manager.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._manager.__aexit__(*exc)


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
        self._watched: SyncStream | AsyncStream | None = None

    def _watching(self, helper: Any, call: Call, stream: type[SyncStream | AsyncStream]) -> Any:
        """``helper``, its raw stream now read through the watch."""
        observer = stream_observer(self._method, self._plan)
        self._watched = helper._raw_stream = stream(helper._raw_stream, observer, call)
        return helper

    def _left(self) -> None:
        """The block is left: the call is recorded now with what was read (the SDK closes
        its response, not the stream we put in its helper)."""
        if self._watched is not None:
            self._watched._finish()


class _SyncManager(_Manager):
    def __enter__(self) -> Any:
        call = self._lifecycle.begin_sync(self._plan, self._attribution)
        try:
            self._manager = self._make()
            helper = self._manager.__enter__()
        except BaseException as exc:
            call.fail(exc)
            raise
        return self._watching(helper, call, SyncStream)

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._manager.__exit__(*exc)
        finally:
            self._left()


class _AsyncManager(_Manager):
    async def __aenter__(self) -> Any:
        call = await self._lifecycle.begin(self._plan, self._attribution)
        try:
            self._manager = self._make()
            helper = await self._manager.__aenter__()
        except BaseException as exc:
            call.fail(exc)
            raise
        return self._watching(helper, call, AsyncStream)

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self._manager.__aexit__(*exc)
        finally:
            self._left()
