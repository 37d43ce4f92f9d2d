"""``track_llm_call`` never loses a call that happened, on real NATS and PostgreSQL: a
response without usage is recorded as the estimate (marked so), a pricing failure is
recorded unpriced, and nothing raises after the provider answered; the reservation is
settled or released."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

import pytest

from budget.pricing import PricingRegistry
from events import UsageRecorded
from events.rpc import RPC_CHECK

from enforcement import EnforcementStack
from support import rows, wait_for

pytestmark = pytest.mark.integration
DIME = Decimal("0.10")


async def recorded_events(
    stack: EnforcementStack, count: int, *, held: int = 0
) -> list[UsageRecorded]:
    """The first ``count`` usage events on the log, once all have been counted and their
    holds settled (but ``held``: an unpriced call's stays until it is priced)."""

    async def counted() -> bool:
        """the calls reached the spend projection and settled their holds"""
        found = await rows(
            stack.settings.database_url,
            "SELECT sum(requests) FROM spend_buckets WHERE scope = 'global'",
        )
        return found == [(count,)] and len(await stack.holds()) == held

    await wait_for(counted, within=15)
    js = stack.nc.jetstream()
    subject = stack.settings.topology.event_subject("usage.recorded")
    sub = await js.pull_subscribe(subject, durable=None)
    messages = await sub.fetch(count, timeout=5)
    return [UsageRecorded.model_validate_json(m.data) for m in messages]


async def test_a_response_without_usage_is_recorded_as_the_estimate(
    stack: EnforcementStack, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.set_policy(limit_amount="10", action="block")

    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1", estimated_tokens=2000)
    async def call() -> str:
        return "a streamed answer, no usage attached"

    with caplog.at_level(logging.WARNING, logger="budget.tracker"):
        assert await call() == "a streamed answer, no usage attached"
        assert await call() == "a streamed answer, no usage attached"
    await stack.tracker.flush()
    events = await recorded_events(stack, 2)
    priced = stack.tracker.checker.estimate("gpt-4o", "openai", 2000)
    assert priced is not None
    for event in events:
        assert event.usage.output_text == 2000 and event.usage.input_tokens == 0
        assert event.cost == priced
        assert event.estimated_reason is not None and "pre-call estimate" in event.estimated_reason
    warnings = [r for r in caplog.records if "estimate" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_response_without_usage_records_an_estimated_cost_as_given(
    stack: EnforcementStack,
) -> None:
    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1", estimated_cost=DIME)
    async def call() -> dict[str, Any]:
        return {"choices": []}

    await call()
    await stack.tracker.flush()
    [event] = await recorded_events(stack, 1)
    assert event.cost == DIME and event.price is None
    assert event.estimated_reason is not None


async def test_a_response_without_usage_or_estimate_is_recorded_unpriced_not_free(
    stack: EnforcementStack,
) -> None:
    """Nothing tells what the call cost: $0 would drop it from every total unseen;
    unpriced, it is counted as a request and listed with the reason."""

    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1")
    async def call() -> str:
        return "a streamed answer, no usage attached"

    await call()
    await stack.tracker.flush()
    [event] = await recorded_events(stack, 1)
    assert event.cost is None and event.price is None
    assert event.unpriced_reason == "no usage in the response and no estimate given"
    assert event.estimated_reason is not None


async def test_a_pricing_failure_is_recorded_unpriced_and_does_not_raise(
    stack: EnforcementStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stack.set_policy(limit_amount="10", action="block")

    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1", estimated_cost=DIME)
    async def call() -> dict[str, Any]:
        return {"usage": {"prompt_tokens": 100, "completion_tokens": 10}}

    def broken(self: PricingRegistry, **_: Any) -> None:
        raise ArithmeticError("price data is corrupt")

    monkeypatch.setattr(PricingRegistry, "price", broken)
    await call()
    await stack.tracker.flush()
    # unpriced, the call counts nothing itself: its hold keeps counting its estimate
    [event] = await recorded_events(stack, 1, held=1)
    assert event.cost is None and event.unpriced_reason is not None
    assert "price data is corrupt" in event.unpriced_reason
    assert event.usage.input_tokens == 100


async def test_a_call_whose_usage_cannot_be_recorded_releases_its_reservation(
    stack: EnforcementStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.set_policy(limit_amount="10", action="block")

    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1", estimated_cost=DIME)
    async def call() -> dict[str, Any]:
        assert len(await stack.holds()) == 1  # reserved before the call
        return {"usage": {"prompt_tokens": 100, "completion_tokens": 10}}

    async def unwritable(event: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stack.tracker.publisher, "publish", unwritable)
    with caplog.at_level(logging.ERROR, logger="budget.tracker"):
        assert (await call())["usage"]["prompt_tokens"] == 100
    assert await stack.holds() == []
    assert any("No space left" in r.getMessage() for r in caplog.records)


async def test_a_response_whose_usage_raises_on_reading_is_recorded_as_the_estimate(
    stack: EnforcementStack,
) -> None:
    """An SDK object whose ``usage`` raises something other than ``ValueError`` (a stream
    not read to its end) still leaves the call recorded, as its estimate."""
    await stack.set_policy(limit_amount="10", action="block")

    class UnreadStream:
        @property
        def usage(self) -> object:
            raise RuntimeError("the stream was not read to its end")

    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1", estimated_cost=DIME)
    async def call() -> UnreadStream:
        return UnreadStream()

    await call()
    await stack.tracker.flush()
    [event] = await recorded_events(stack, 1)
    assert event.cost == DIME
    assert event.estimated_reason is not None
    assert "RuntimeError: the stream was not read to its end" in event.estimated_reason


async def test_attributes_no_event_can_hold_are_refused_where_the_decorator_is_applied(
    stack: EnforcementStack,
) -> None:
    """Not after each call has been paid for, when the event is built and refused."""
    with pytest.raises(ValueError, match="tags"):
        stack.tracker.track_llm_call(model="gpt-4o", tags={"team": 7})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"tags\.team holds a NUL"):
        stack.tracker.track_llm_call(model="gpt-4o", tags={"team": "a\x00b"})


async def test_a_tracked_call_cancelled_while_its_check_is_answered_releases_its_hold(
    stack: EnforcementStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task cancelled while the enforcer reserves for it (``asyncio.timeout`` around
    the call, a client gone) never calls the function: the hold the answer makes is
    released once it arrives, not held against the BLOCK limit until it expires."""
    await stack.set_policy(limit_amount="10", action="block")
    await stack.enforcer_applies_policies()
    checker = stack.tracker.checker
    ask = checker._ask
    reserved, answer_delivered = asyncio.Event(), asyncio.Event()
    called = []

    async def answered_late(name: str, *args: Any, **kwargs: Any) -> Any:
        answer = await ask(name, *args, **kwargs)
        if name == RPC_CHECK:
            reserved.set()
            await answer_delivered.wait()  # the answer still on its way when the task ends
        return answer

    monkeypatch.setattr(checker, "_ask", answered_late)

    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1", estimated_cost=DIME)
    async def call() -> dict[str, Any]:
        called.append(True)
        return {"usage": {"prompt_tokens": 100, "completion_tokens": 10}}

    await stack.cancel_while_answer_in_flight(
        asyncio.create_task(call()), reserved, answer_delivered
    )
    assert called == []
