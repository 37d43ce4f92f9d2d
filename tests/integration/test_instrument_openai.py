"""``budget.instrument`` on the real ``openai`` client, sync and async, over a mock
transport answering with recorded bodies and streams: each call's usage classes and cost
recorded once, the budget checked before, reservations released on failure."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import math
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

import budget
from budget import BudgetExceeded
from budget.config import Settings
from budget.pricing import Priced
from events import ImageUsage, Topology, Usage, UsageRecorded

from enforcement import EnforcementStack
from provider_mocks import (
    GPT_4O_CHAT,
    GPT_4O_MINI_CHAT_STREAM,
    GPT_IMAGE,
    GPT_IMAGE_1_COST,
    O4_MINI_RESPONSE,
    O4_MINI_RESPONSE_COST,
    ProviderApi,
    assert_asked_for_usage,
    assert_each,
    assert_estimated,
    call,
    in_thread,
    per_million,
    recorded_usage,
    sync_and_async,
)
from support import ROOT, wait_for

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Say hello"}]
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": HELLO, "max_tokens": 100}
RESPONSES: dict[str, Any] = {"model": "o4-mini", "input": "A haiku", "max_output_tokens": 1000}


def clients(api: ProviderApi, stack: EnforcementStack, **options: Any) -> tuple[Any, Any]:
    sync = openai.OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=api.transport()))
    asynchronous = openai.AsyncOpenAI(
        api_key="sk-test", http_client=httpx2.AsyncClient(transport=api.transport())
    )
    for client in (sync, asynchronous):
        budget.instrument(client, tracker=stack.tracker, **options)
    return sync, asynchronous


async def every_kind_of_call(client: Any, sync: bool) -> list[str]:
    """Chat, streamed chat, Responses, streamed Responses, embeddings, images and a
    transcription; the text of the streams as the caller saw it."""
    seen: list[str] = []
    await call(sync, client.chat.completions.create, model="gpt-4o", messages=HELLO, max_tokens=100)
    stream = await call(
        sync, client.chat.completions.create, model="gpt-4o-mini", messages=HELLO, stream=True
    )
    chunks = await in_thread(list, stream) if sync else [c async for c in stream]
    assert all(c.choices for c in chunks), "the usage chunk nobody asked for is kept back"
    seen.append("".join(c.choices[0].delta.content or "" for c in chunks))
    await call(
        sync, client.responses.create, model="o4-mini", input="A haiku", max_output_tokens=1000
    )
    stream = await call(
        sync, client.responses.create, model="o4-mini", input="A haiku", stream=True
    )
    events = await in_thread(list, stream) if sync else [e async for e in stream]
    seen.append(events[-1].type)
    await call(sync, client.embeddings.create, model="text-embedding-3-small", input=["a", "b"])
    await call(sync, client.images.generate, model="gpt-image-1", prompt="A lighthouse", n=2)
    audio = ("speech.mp3", io.BytesIO(b"ID3\x03\x00" + bytes(64)), "audio/mpeg")
    await call(sync, client.audio.transcriptions.create, model="whisper-1", file=audio)
    return seen


@sync_and_async
async def test_each_call_records_its_exact_usage_and_cost_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = clients(
        api, stack, user_id="alice", project_id="apollo", tags={"team": "search"}
    )
    async with recorded_usage(stack.nc, topology) as recorded:
        seen = await every_kind_of_call(sync_client if sync else async_client, sync)
        events = await recorded.exactly(stack.tracker, 7)

    assert seen == ["Hello! How can I help you today?", "response.completed"]
    assert_asked_for_usage(api.requests[1])
    by_model = {e.model: e for e in events}
    assert set(by_model) == {
        "gpt-4o-2024-08-06",
        "gpt-4o-mini-2024-07-18",
        "o4-mini-2025-04-16",
        "text-embedding-3-small",
        "gpt-image-1",
        "whisper-1",
    }
    chat = by_model["gpt-4o-2024-08-06"]
    assert chat.usage == GPT_4O_CHAT
    assert chat.cost == per_million(a=("2.50", 93), b=("1.25", 1024), c=("10", 46))
    streamed = by_model["gpt-4o-mini-2024-07-18"]
    assert streamed.usage == GPT_4O_MINI_CHAT_STREAM
    assert streamed.cost == per_million(a=("0.15", 19), b=("0.60", 10))
    responses = [e for e in events if e.model == "o4-mini-2025-04-16"]
    assert len(responses) == 2
    assert_each(responses, usage=O4_MINI_RESPONSE, cost=O4_MINI_RESPONSE_COST)
    embedding = by_model["text-embedding-3-small"]
    assert (embedding.kind, embedding.usage) == ("embedding", Usage(embedding_tokens=16))
    assert embedding.cost == per_million(a=("0.02", 16))
    image = by_model["gpt-image-1"]
    assert (image.kind, image.usage, image.cost) == ("image", GPT_IMAGE, GPT_IMAGE_1_COST)
    audio = by_model["whisper-1"]
    assert (audio.kind, audio.usage) == ("audio", Usage(audio_seconds=Decimal(9)))
    assert audio.cost == Decimal("0.006") * 9 / 60
    # reservation_id None: no BLOCK policy, the local check path.
    assert_each(
        events,
        provider="openai",
        user_id="alice",
        project_id="apollo",
        tags={"team": "search"},
        estimated_reason=None,
        reservation_id=None,
    )


async def test_prompt_tokens_written_to_the_cache_are_recorded_as_cache_writes(
    stack: EnforcementStack, topology: Topology
) -> None:
    """Since gpt-5.6 OpenAI bills the prompt tokens a call writes to its cache
    (``cache_write_tokens``, in chat's ``prompt_tokens_details`` and the Responses API's
    ``input_tokens_details``) at 1.25x the input rate: they are cache writes, not
    uncached input."""
    api = ProviderApi(
        answers={
            "/v1/chat/completions": "openai_chat_cache_write.json",
            "/v1/responses": "openai_responses_cache_write.json",
        }
    )
    _, client = clients(api, stack)
    async with recorded_usage(stack.nc, topology) as recorded:
        await client.chat.completions.create(model="gpt-6.1-sol", messages=HELLO)
        await client.responses.create(model="gpt-6.1-sol", input="A haiku")
        events = await recorded.exactly(stack.tracker, 2)
    chat, responses = sorted(events, key=lambda e: e.usage.output_reasoning)
    prompt = {"input_uncached": 476, "input_cache_read": 1024, "input_cache_write": 1500}
    prompt_cost = per_million(a=("2", 476), b=("0.1", 1024), c=("2.5", 1500))
    assert chat.usage == Usage(**prompt, output_text=46)
    assert chat.cost == prompt_cost + per_million(a=("10", 46))
    assert responses.usage == Usage(**prompt, output_text=80, output_reasoning=120)
    assert responses.cost == prompt_cost + per_million(a=("10", 200))
    assert_each(events, model="gpt-6.1-sol", estimated_reason=None)


@sync_and_async
async def test_legacy_text_completions_streamed_or_not_record_exact_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = clients(api, stack, user_id="alice")
    request = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 7}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            create = sync_client.completions.create
            answer = await in_thread(create, **request)
            chunks = await in_thread(lambda: list(create(**request, stream=True)))
        else:
            answer = await async_client.completions.create(**request)
            chunks = [
                c async for c in await async_client.completions.create(**request, stream=True)
            ]
        events = await recorded.exactly(stack.tracker, 2)
    assert answer.choices[0].text == "\n\nThis is indeed a test"
    # The usage chunk the instrumentation asked for is kept from the caller.
    assert all(chunk.choices for chunk in chunks)
    assert "".join(chunk.choices[0].text for chunk in chunks) == "\n\nThis is a test."
    assert_asked_for_usage(api.requests[1])
    answered, streamed = sorted(events, key=lambda e: e.usage.output_text, reverse=True)
    assert answered.usage == Usage(input_uncached=5, output_text=7)
    assert answered.cost == per_million(a=("1.50", 5), b=("2", 7))
    assert streamed.usage == Usage(input_uncached=5, output_text=6)
    assert streamed.cost == per_million(a=("1.50", 5), b=("2", 6))
    assert_each(
        events,
        provider="openai",
        model="gpt-3.5-turbo-instruct",
        user_id="alice",
        estimated_reason=None,
    )


async def test_a_text_completion_stream_abandoned_records_the_text_it_received(
    stack: EnforcementStack, topology: Topology
) -> None:
    api = ProviderApi()
    _, client = clients(api, stack)
    request = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"}
    async with recorded_usage(stack.nc, topology) as recorded:
        stream = await client.completions.create(**request, stream=True)
        async with stream:
            got = [await stream.__anext__() for _ in range(3)]
        [event] = await recorded.exactly(stack.tracker, 1)
    assert "".join(chunk.choices[0].text for chunk in got) == "\n\nThis is"
    # The prompt, 18 characters: 5 tokens; the text received, 9 characters: 3 tokens.
    assert event.usage == Usage(input_uncached=5, output_text=3)
    assert_estimated(event, "before its usage arrived")


async def test_a_caller_that_asked_for_usage_keeps_the_usage_chunk(
    stack: EnforcementStack, topology: Topology
) -> None:
    api = ProviderApi()
    _, client = clients(api, stack)
    async with recorded_usage(stack.nc, topology) as recorded:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        [event] = await recorded.exactly(stack.tracker, 1)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 29
    assert event.usage == GPT_4O_MINI_CHAT_STREAM


@sync_and_async
async def test_a_stream_looped_over_straight_from_the_call_records_its_usage(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """``for chunk in create(stream=True)`` holds no other reference to the stream: it
    must live until the loop ends, not record (nothing) as the loop starts."""
    api = ProviderApi()
    sync_client, async_client = clients(api, stack)
    chat = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            create = sync_client.chat.completions.create
            text = await in_thread(
                lambda: "".join(c.choices[0].delta.content or "" for c in create(**chat))
            )
        else:
            stream = async_client.chat.completions.create(**chat)
            text = "".join([c.choices[0].delta.content or "" async for c in await stream])
        [event] = await recorded.exactly(stack.tracker, 1)
    assert text == "Hello! How can I help you today?"
    assert event.usage == GPT_4O_MINI_CHAT_STREAM
    assert event.estimated_reason is None


@sync_and_async
async def test_a_stream_is_still_an_instance_of_the_sdks_stream_class(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """Host code that tells a streamed answer from a whole one by
    ``isinstance(answer, openai.Stream)`` (or ``AsyncStream``) had taken the instrumented
    stream for a whole answer, and failed on it; it is recorded as before."""
    api = ProviderApi()
    sync_client, async_client = clients(api, stack)
    chat = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            stream = await in_thread(sync_client.chat.completions.create, **chat)
            assert isinstance(stream, openai.Stream)
            chunks = await in_thread(list, stream)
        else:
            astream = await async_client.chat.completions.create(**chat)
            assert isinstance(astream, openai.AsyncStream)
            chunks = [chunk async for chunk in astream]
        [event] = await recorded.exactly(stack.tracker, 1)
    assert isinstance(chunks[0], openai.types.chat.ChatCompletionChunk)
    assert event.usage == GPT_4O_MINI_CHAT_STREAM


@sync_and_async
async def test_a_chunk_without_a_delta_passes_to_the_caller_and_the_usage_after_it_counts(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """Some OpenAI-compatible servers end a choice with ``"delta": null``, which the SDK
    passes on as ``None``: the instrumented stream had raised AttributeError at it, in the
    caller's loop, and recorded an estimate; it now passes it on as the SDK does and
    records the usage chunk after it."""
    api = ProviderApi(streams={"/v1/chat/completions": "openai_chat_stream_null_delta.sse"})
    sync_client, async_client = clients(api, stack)
    chat = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            chunks = await in_thread(lambda: list(sync_client.chat.completions.create(**chat)))
        else:
            chunks = [c async for c in await async_client.chat.completions.create(**chat)]
        [event] = await recorded.exactly(stack.tracker, 1)
    assert chunks[-1].choices[0].delta is None
    assert (event.usage, event.estimated_reason) == (GPT_4O_MINI_CHAT_STREAM, None)


async def test_an_abandoned_stream_records_what_it_consumed(
    stack: EnforcementStack, topology: Topology
) -> None:
    api = ProviderApi()
    sync_client, client = clients(api, stack)
    async with recorded_usage(stack.nc, topology) as recorded:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True, budget_user_id="quitter"
        )
        async with stream:
            got = [await stream.__anext__() for _ in range(3)]  # "", "Hello", "!"
        assert "".join(c.choices[0].delta.content for c in got) == "Hello!"

        def read_two_and_drop() -> None:
            stream = sync_client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True, budget_user_id="dropper"
            )
            for index, _ in enumerate(stream):
                if index == 2:
                    break  # and the stream is garbage: collected, it records

        await in_thread(read_two_and_drop)
        events = await recorded.exactly(stack.tracker, 2)
    for event in events:
        # "Say hello" + "user": 13 characters, 4 tokens; "Hello!": 2 tokens.
        assert event.usage == Usage(input_uncached=4, output_text=2)
        assert_estimated(event, "before its usage arrived")
    assert {e.user_id for e in events} == {"quitter", "dropper"}


@sync_and_async
async def test_a_stream_whose_connection_drops_records_what_it_received_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """The connection lost mid-stream: the caller gets the error, and the call, paid for
    what was sent, is recorded once with what arrived, settling its reservation."""
    await stack.set_policy(limit_amount="100", action="block")
    await stack.enforcer_applies_policies()
    api = ProviderApi()
    transport = api.cut_transport(events=3)  # "", "Hello", "!"
    if sync:
        client: Any = openai.OpenAI(api_key="k", http_client=httpx2.Client(transport=transport))
    else:
        http = httpx2.AsyncClient(transport=transport)
        client = openai.AsyncOpenAI(api_key="k", http_client=http)
    budget.instrument(client, tracker=stack.tracker, user_id="alice")
    request = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    got: list[Any] = []

    def read_sync() -> None:
        got.extend(client.chat.completions.create(**request))

    async with recorded_usage(stack.nc, topology) as recorded:
        with pytest.raises(openai.APIConnectionError):  # the SDK's, from the ReadError
            if sync:
                await in_thread(read_sync)
            else:
                async for chunk in await client.chat.completions.create(**request):
                    got.append(chunk)
        [event] = await recorded.exactly(stack.tracker, 1)
    assert "".join(c.choices[0].delta.content for c in got) == "Hello!"
    # "Say hello" + "user": 13 characters, 4 tokens; "Hello!": 2 tokens.
    assert event.usage == Usage(input_uncached=4, output_text=2)
    assert_estimated(event, "before its usage arrived")
    assert event.reservation_id is not None

    async def settled() -> bool:
        """the call's hold was settled by its usage"""
        return await stack.holds() == []

    await wait_for(settled)


@sync_and_async
async def test_a_responses_stream_cut_short_in_a_tool_call_records_its_arguments_received(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """A Responses stream that ends before ``response.completed`` is charged the prompt
    and the output received, estimated: a function call's arguments are output too (they
    had been left out, a stream cut in a tool call charged no output)."""
    stream = "openai_responses_stream_function_call_cut_short.sse"
    api = ProviderApi(streams={"/v1/responses": stream})
    sync_client, async_client = clients(api, stack)
    request = {"model": "o4-mini", "input": "Weather in Paris?", "stream": True}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            events = await in_thread(lambda: list(sync_client.responses.create(**request)))
            kinds = [e.type for e in events]
        else:
            kinds = [e.type async for e in await async_client.responses.create(**request)]
        [event] = await recorded.exactly(stack.tracker, 1)
    assert kinds[-1] == "response.function_call_arguments.delta"
    # "Weather in Paris?" and '{"city": "Paris"}': 17 characters each, 5 tokens.
    assert event.usage == Usage(input_uncached=5, output_text=5)
    assert_estimated(event, "before its usage arrived")


async def test_a_stream_helper_left_early_records_at_once(
    stack: EnforcementStack, topology: Topology
) -> None:
    """OpenAI's ``stream()`` helpers close the HTTP response, not the stream they read,
    and hold themselves in a reference cycle: leaving the block records the call then,
    not whenever the cycle collector runs (here: never, it is off)."""
    api = ProviderApi()
    sync_client, client = clients(api, stack)
    chat = {"model": "gpt-4o-mini", "messages": HELLO}
    gc.disable()
    try:
        async with recorded_usage(stack.nc, topology) as recorded:
            with budget.attribute_to(user_id="quitter"):
                async with client.chat.completions.stream(**chat) as s:
                    async for event in s:
                        if event.type == "content.delta" and event.snapshot == "Hello!":
                            break

            def read_and_leave() -> None:
                with (
                    budget.attribute_to(user_id="leaver"),
                    sync_client.chat.completions.stream(**chat) as s,
                ):
                    for event in s:
                        if event.type == "content.delta" and event.snapshot == "Hello!":
                            break

            await in_thread(read_and_leave)
            events = await recorded.exactly(stack.tracker, 2)
    finally:
        gc.enable()
    for event in events:
        assert event.usage == Usage(input_uncached=4, output_text=2)
        assert_estimated(event, "before its usage arrived")
    assert {e.user_id for e in events} == {"quitter", "leaver"}


async def test_overrides_by_context_and_by_keyword(
    stack: EnforcementStack, topology: Topology
) -> None:
    api = ProviderApi()
    _, client = clients(api, stack, user_id="alice", project_id="apollo", tags={"team": "a"})
    async with recorded_usage(stack.nc, topology) as recorded:
        with budget.attribute_to(user_id="bob", tags={"feature": "summary"}):
            await client.embeddings.create(model="text-embedding-3-small", input="x")
            await client.embeddings.create(
                model="text-embedding-3-small", input="x", budget_project_id="hermes"
            )
        await client.embeddings.create(
            model="text-embedding-3-small", input="x", budget_tags={"team": "b"}
        )
        events = await recorded.exactly(stack.tracker, 3)
    attributed = sorted((e.user_id, e.project_id, sorted(e.tags.items())) for e in events)
    assert attributed == [
        ("alice", "apollo", [("team", "b")]),
        ("bob", "apollo", [("feature", "summary"), ("team", "a")]),
        ("bob", "hermes", [("feature", "summary"), ("team", "a")]),
    ]
    assert all("budget_" not in str(body) for body in api.requests)


@sync_and_async
async def test_usage_too_large_for_nats_is_logged_and_the_call_answered(
    stack: EnforcementStack, topology: Topology, sync: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A tag larger than NATS takes: the call returns the provider's answer, an error
    names the event's size and the server's limit, and nothing is stored for it."""
    sync_client, async_client = clients(ProviderApi(), stack)
    client = sync_client if sync else async_client
    huge = {"prompt": "x" * 1_100_000}

    def refused() -> list[str]:
        return [r.getMessage() for r in caplog.records if "max_payload" in r.getMessage()]

    async def logged() -> bool:
        """the event too large was refused, saying so"""
        return bool(refused())

    async with recorded_usage(stack.nc, topology) as recorded:
        with caplog.at_level(logging.ERROR, logger="budget"):
            answer = await call(sync, client.chat.completions.create, **CHAT, budget_tags=huge)
            await wait_for(logged)
        assert await recorded.exactly(stack.tracker, 0) == []
    assert answer.choices[0].message.content
    assert "1048576 bytes" in refused()[0]


async def test_refused_calls_raise_and_are_not_sent(
    stack: EnforcementStack, topology: Topology
) -> None:
    await stack.set_policy(limit_amount="0.0001", action="block")
    await stack.enforcer_applies_policies()
    api = ProviderApi()
    sync_client, client = clients(api, stack)
    _, shaped = clients(api, stack, refusal="provider_error")
    big = {"model": "gpt-4o", "messages": HELLO, "max_tokens": 100_000}
    with pytest.raises(BudgetExceeded):
        await client.chat.completions.create(**big)
    with pytest.raises(BudgetExceeded):
        await in_thread(sync_client.chat.completions.create, **big)
    with pytest.raises(openai.RateLimitError) as refused:
        await shaped.chat.completions.create(**big)
    cause = refused.value.__cause__
    assert isinstance(cause, BudgetExceeded)
    assert refused.value.status_code == 429
    # When to try again, as a rate limit says it: code that backs off on 429s reads it.
    assert cause.result.retry_after is not None
    retry_after = refused.value.response.headers["retry-after"]
    assert retry_after == str(math.ceil(cause.result.retry_after))
    assert api.requests == []


async def test_a_request_for_several_choices_is_estimated_for_each(
    stack: EnforcementStack, topology: Topology
) -> None:
    """``n`` choices may each use the whole output allowance, and each is paid for."""
    await stack.set_policy(limit_amount="0.05", action="block")
    await stack.enforcer_applies_policies()
    api = ProviderApi()
    _, client = clients(api, stack)
    # 1,000 tokens at gpt-4o's $10 a million: $0.01 a choice, eight $0.08, over the limit.
    request = {"model": "gpt-4o", "messages": HELLO, "max_completion_tokens": 1000}
    with pytest.raises(BudgetExceeded):
        await client.chat.completions.create(**request, n=8)
    assert api.requests == []
    async with recorded_usage(stack.nc, topology) as recorded:
        await client.chat.completions.create(**request, n=2)
        await recorded.exactly(stack.tracker, 1)
    assert len(api.requests) == 1


async def test_a_failed_call_releases_its_reservation(
    stack: EnforcementStack, topology: Topology
) -> None:
    await stack.set_policy(limit_amount="100", action="block")
    await stack.enforcer_applies_policies()
    api = ProviderApi(fail_with=400)
    sync_client, client = clients(api, stack)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=10)
    with pytest.raises(openai.BadRequestError):
        await in_thread(
            sync_client.chat.completions.create, model="gpt-4o", messages=HELLO, max_tokens=10
        )

    async def released() -> bool:
        """both reservations were released"""
        return await stack.holds() == []

    await wait_for(released, within=30)
    api.fail_with = None
    async with recorded_usage(stack.nc, topology) as recorded:
        await client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=10)
        [event] = await recorded.exactly(stack.tracker, 1)
    assert event.reservation_id is not None  # settled by the spend projection


async def test_a_call_cancelled_while_its_check_is_answered_releases_what_was_reserved(
    stack: EnforcementStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task cancelled while the enforcer reserves for it (a client gone, a timeout)
    never sends its request: the reservation is given back once the answer arrives,
    not held against the budget until it expires."""
    await stack.set_policy(limit_amount="100", action="block")
    await stack.enforcer_applies_policies()
    api = ProviderApi()
    _, client = clients(api, stack)
    check_budget = stack.tracker.check_budget
    reserved, answer_delivered = asyncio.Event(), asyncio.Event()

    async def answered_late(*args: Any, **kwargs: Any) -> Any:
        result = await check_budget(*args, **kwargs)
        reserved.set()
        await answer_delivered.wait()  # the answer still on its way when the call ends
        return result

    monkeypatch.setattr(stack.tracker, "check_budget", answered_late)
    calling = asyncio.create_task(
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=10)
    )
    await stack.cancel_while_answer_in_flight(calling, reserved, answer_delivered)
    assert api.requests == []


def interrupted_client(settings: Settings, cwd: Path) -> subprocess.Popen[str]:
    """``interrupted_client.py`` on ``settings``' NATS and subjects."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "BUDGET_NATS_URL": settings.nats_url,
        "BUDGET_SUBJECT_PREFIX": settings.topology.prefix,
        "BUDGET_SPOOL_DIR": str(cwd / "script-spool"),
    }
    env.pop("BUDGET_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("interrupted_client.py"))],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_sync_call_interrupted_while_its_check_is_answered_releases_what_was_reserved(
    stack: EnforcementStack, tmp_path: Path
) -> None:
    """A script's Ctrl-C reaches its sync client while it waits for the enforcer's answer,
    which reserved: the KeyboardInterrupt ends the call, and the reservation is given back
    once the answer arrives (it had been held against the budget until it expired)."""
    await stack.set_policy(limit_amount="100", action="block")
    await stack.enforcer_applies_policies()
    process = interrupted_client(stack.settings, tmp_path)
    try:
        assert process.stdout is not None
        # bounded: a client that never says fails the test (the kill below ends the read)
        reserved = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        assert reserved.startswith("reserved ") and reserved.split()[1] != "None", reserved
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        assert line == "interrupted\n", line

        async def released() -> bool:
            """the interrupted call's hold was released"""
            return await stack.holds() == []

        await wait_for(released, within=30)
        _, err = await asyncio.to_thread(process.communicate, "", 60)  # stdin closed
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()


async def test_a_client_pointed_at_another_provider_records_its_calls_as_that_providers(
    stack: EnforcementStack, topology: Topology
) -> None:
    """The OpenAI SDK is how many providers are called (DeepSeek, Groq, xAI, OpenRouter):
    a client whose base_url is one of theirs is checked, recorded and priced as theirs,
    not as an OpenAI model without a price."""
    api = ProviderApi()
    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="https://api.deepseek.com/v1",
        http_client=httpx2.AsyncClient(transport=api.transport()),
    )
    budget.instrument(client, tracker=stack.tracker, user_id="alice")
    async with recorded_usage(stack.nc, topology) as recorded:
        await client.with_options(timeout=5).chat.completions.create(
            model="deepseek-chat", messages=HELLO, max_tokens=100
        )
        [event] = await recorded.exactly(stack.tracker, 1)
    usage = Usage(input_uncached=10, input_cache_read=64, output_text=10)
    assert (event.provider, event.model, event.usage) == ("deepseek", "deepseek-chat", usage)
    priced = stack.tracker.registry.price(
        provider="deepseek", model="deepseek-chat", usage=usage, at=event.occurred_at
    )
    assert isinstance(priced, Priced) and event.cost == priced.cost
    assert event.unpriced_reason is None


async def _streamed_through(
    api: ProviderApi,
    base_url: str,
    model: str,
    stack: EnforcementStack,
    topology: Topology,
    sync: bool,
) -> tuple[list[Any], UsageRecorded]:
    """A chat streamed by an instrumented OpenAI client pointed at another provider's API
    (``api`` answering): the chunks the caller read, and the one event recorded."""
    options: dict[str, Any] = {"api_key": "k", "base_url": base_url}
    client: Any
    if sync:
        client = openai.OpenAI(**options, http_client=httpx2.Client(transport=api.transport()))
    else:
        http = httpx2.AsyncClient(transport=api.transport())
        client = openai.AsyncOpenAI(**options, http_client=http)
    budget.instrument(client, tracker=stack.tracker, user_id="alice")
    request = {"model": model, "messages": HELLO, "max_tokens": 100}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            chunks = await in_thread(
                lambda: list(client.chat.completions.create(**request, stream=True))
            )
        else:
            chunks = [c async for c in await client.chat.completions.create(**request, stream=True)]
        [event] = await recorded.exactly(stack.tracker, 1)
    return chunks, event


@pytest.mark.parametrize("usage_chunk", [False, True], ids=["x_groq-only", "and-usage-chunk"])
@sync_and_async
async def test_a_stream_from_groq_records_the_usage_its_last_chunk_tells_in_x_groq(
    stack: EnforcementStack, topology: Topology, sync: bool, usage_chunk: bool
) -> None:
    """Groq tells a stream's usage in its last chunk's ``x_groq.usage`` (a usage chunk
    after it only as its API now sends one when asked): a stream with the ``x_groq``
    usage alone had been recorded as the prompt and text estimated. Either way the call is
    recorded once, at the counts Groq told, and the caller sees Groq's chunks as sent
    but the usage chunk the instrumentation asked for."""
    api = ProviderApi(groq_usage_chunk=usage_chunk)
    chunks, event = await _streamed_through(
        api, "https://api.groq.com/openai/v1", "llama-3.3-70b-versatile", stack, topology, sync
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        "Hello! How can I help you today?"
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["x_groq"]["usage"]["prompt_tokens"] == 41
    usage = Usage(input_uncached=41, output_text=10)
    assert (event.provider, event.model, event.usage) == (
        "groq",
        "llama-3.3-70b-versatile",
        usage,
    )
    assert event.estimated_reason is None
    priced = stack.tracker.registry.price(
        provider="groq", model="llama-3.3-70b-versatile", usage=usage, at=event.occurred_at
    )
    assert isinstance(priced, Priced) and event.cost == priced.cost
    assert event.cost == per_million(a=("0.59", 41), b=("0.79", 10))


@sync_and_async
async def test_a_stream_from_mistral_is_sent_as_asked_and_records_its_last_chunks_usage(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """Mistral's API refuses ``stream_options`` (422, extra_forbidden) and sends a
    stream's usage in its last chunk unasked: a client pointed at it had every streamed
    call refused once instrumented, for the ``include_usage`` the instrumentation added."""
    api = ProviderApi()
    chunks, event = await _streamed_through(
        api, "https://api.mistral.ai/v1", "mistral-small-latest", stack, topology, sync
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there!"
    assert chunks[-1].usage is not None  # the stream as Mistral sent it
    assert api.requests[0] is not None and "stream_options" not in api.requests[0]
    assert (event.provider, event.model, event.user_id) == (
        "mistral",
        "mistral-small-latest",
        "alice",
    )
    assert event.usage == Usage(input_uncached=9, output_text=4)
    assert event.cost == per_million(a=("0.15", 9), b=("0.60", 4))
    assert event.estimated_reason is None


class HostAppClient(openai.AsyncOpenAI):
    """A host app's own client: the SDK's, with a default of its own."""

    def __init__(self, **options: Any) -> None:
        super().__init__(api_key="sk-test", max_retries=5, **options)


async def test_a_host_apps_subclass_of_an_sdk_client_is_instrumented(
    stack: EnforcementStack, topology: Topology
) -> None:
    """A subclass of an SDK client, from the host app's own module, had been refused with
    TypeError ('knows the openai, anthropic and google-genai clients'): it is one."""
    api = ProviderApi()
    client = HostAppClient(http_client=httpx2.AsyncClient(transport=api.transport()))
    budget.instrument(client, tracker=stack.tracker, user_id="alice")
    async with recorded_usage(stack.nc, topology) as recorded:
        await client.chat.completions.create(**CHAT)
        [event] = await recorded.exactly(stack.tracker, 1)
    assert (event.provider, event.user_id, event.usage) == ("openai", "alice", GPT_4O_CHAT)


async def test_a_request_without_a_model_or_with_an_unknown_one_still_goes_and_is_recorded(
    stack: EnforcementStack, topology: Topology
) -> None:
    api = ProviderApi()
    sync_client, client = clients(api, stack)
    async with recorded_usage(stack.nc, topology) as recorded:
        # The Responses API takes no model when a stored prompt names it: the answer does.
        await client.responses.create(input="A haiku", max_output_tokens=1000)
        # Image answers name no model: the request's, which has no price.
        await in_thread(sync_client.images.generate, model="gpt-image-9", prompt="A lighthouse")
        # The SDK itself refuses a chat request without a model, as it would uninstrumented.
        with pytest.raises(TypeError, match="Missing required arguments"):
            await client.chat.completions.create(messages=HELLO)
        events = await recorded.exactly(stack.tracker, 2)
    assert len(api.requests) == 2
    by_model = {e.model: e for e in events}
    assert by_model["o4-mini-2025-04-16"].cost == O4_MINI_RESPONSE_COST
    unknown = by_model["gpt-image-9"]
    assert unknown.usage == GPT_IMAGE
    assert unknown.cost is None
    assert unknown.unpriced_reason is not None and "gpt-image-9" in unknown.unpriced_reason


@sync_and_async
async def test_clients_and_raw_responses_made_from_an_instrumented_client_are_recorded(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = clients(api, stack, user_id="alice")
    client = sync_client if sync else async_client

    raw_chat = client.with_raw_response.chat.completions.create
    async with recorded_usage(stack.nc, topology) as recorded:
        await call(sync, client.with_options(timeout=5).chat.completions.create, **CHAT)
        raw = await call(sync, raw_chat, **CHAT)
        assert raw.parse().usage.total_tokens == 1163  # the caller's parse() as before
        raw_stream = (await call(sync, raw_chat, **CHAT, stream=True)).parse()
        chunks = await in_thread(list, raw_stream) if sync else [c async for c in raw_stream]
        streaming = client.with_streaming_response.chat.completions.create
        if sync:

            def read_body() -> list[str]:
                with streaming(**CHAT, stream=True) as body:
                    return list(body.iter_lines())

            lines = await in_thread(read_body)
        else:
            async with streaming(**CHAT, stream=True) as body:
                lines = [line async for line in body.iter_lines()]
        events = await recorded.exactly(stack.tracker, 4)
    # The raw stream's chunks pass the watch, which keeps back the usage chunk it asked for.
    assert chunks and all(chunk.choices for chunk in chunks)
    by_model: dict[str, list[Any]] = {}
    for event in events:
        assert event.user_id == "alice"
        by_model.setdefault(event.model, []).append(event)
    assert [e.usage for e in by_model["gpt-4o-2024-08-06"]] == 2 * [GPT_4O_CHAT]
    # A with_streaming_response stream's body, read by its caller: the usage chunk asked
    # for is left out of it, and recorded (test_instrument_streaming_bodies.py reads
    # bodies arriving in pieces).
    assert any("[DONE]" in line for line in lines)
    assert_asked_for_usage(api.requests[3])
    assert all('"choices":[]' not in line for line in lines)
    assert [e.usage for e in by_model["gpt-4o-mini-2024-07-18"]] == 2 * [GPT_4O_MINI_CHAT_STREAM]
    assert_each(events, estimated_reason=None)


@sync_and_async
async def test_newer_gpt_image_models_are_priced_by_their_tokens(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """GPT Image 1 Mini and GPT Image 2 have no per-image price, only their tokens' (the
    images' output tokens at $8 and $30 per million): they had been recorded unpriced.
    GPT Image 1.5 bills its image output at $32, its text output at $10, which ``Usage``
    counts together: recorded unpriced, saying why, never at the text rate."""
    api = ProviderApi()
    sync_client, async_client = clients(api, stack, user_id="alice")
    client = sync_client if sync else async_client
    models = ("gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
    async with recorded_usage(stack.nc, topology) as recorded:
        for model in models:
            await call(sync, client.images.generate, model=model, prompt="A lighthouse", n=2)
        events = await recorded.exactly(stack.tracker, 3)
    mini, one_and_a_half, two = sorted(events, key=lambda event: event.model)
    assert_each(events, kind="image", usage=GPT_IMAGE, user_id="alice")
    assert mini.cost == per_million(a=("2", 50), b=("8", 8320))
    assert two.cost == per_million(a=("5", 50), b=("30", 8320))
    assert one_and_a_half.cost is None
    assert "8320 output image tokens" in (one_and_a_half.unpriced_reason or "")


@sync_and_async
async def test_an_image_edit_records_its_images_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = clients(api, stack, user_id="alice")
    png = ("lighthouse.png", io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(64)), "image/png")
    edit = {"model": "gpt-image-1", "image": png, "prompt": "Add a boat", "n": 2}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            await in_thread(sync_client.images.edit, **edit)
        else:
            await async_client.images.edit(**edit)
        [event] = await recorded.exactly(stack.tracker, 1)
    assert (event.model, event.kind) == ("gpt-image-1", "image")
    assert (event.usage, event.cost) == (GPT_IMAGE, GPT_IMAGE_1_COST)
    assert event.estimated_reason is None and event.user_id == "alice"


@sync_and_async
async def test_a_call_served_in_a_dearer_or_cheaper_service_tier_is_not_priced_standard(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """OpenAI bills the priority tier at 1.7x the standard rates (gpt-4o: $4.25 and $17)
    and flex at about half (o4-mini); the answer's ``service_tier`` says which served the
    call. An event has no tier, so such a call is recorded unpriced, saying why, never at
    the standard rate (they had been, 41% short or twice over)."""
    api = ProviderApi(
        answers={
            "/v1/chat/completions": "openai_chat_priority.json",
            "/v1/responses": "openai_responses_flex.json",
        }
    )
    sync_client, async_client = clients(api, stack, user_id="alice")
    client = sync_client if sync else async_client
    async with recorded_usage(stack.nc, topology) as recorded:
        await call(
            sync,
            client.chat.completions.create,
            model="gpt-4o",
            messages=HELLO,
            service_tier="priority",
        )
        await call(sync, client.responses.create, model="o4-mini", input="A haiku")
        events = await recorded.exactly(stack.tracker, 2)
    priority, flex = sorted(events, key=lambda event: event.model)  # gpt-4o, o4-mini
    assert (priority.usage, priority.cost) == (GPT_4O_CHAT, None)
    assert "the 'priority' service tier" in (priority.unpriced_reason or "")
    assert (flex.usage, flex.cost) == (O4_MINI_RESPONSE, None)
    assert "the 'flex' service tier" in (flex.unpriced_reason or "")


@sync_and_async
async def test_a_response_that_searched_the_web_or_files_is_not_priced_at_its_tokens_alone(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """OpenAI bills each web search a Responses call makes at $10 a thousand (o4-mini) and
    each file search at $2.50, besides the tokens: the usage does not count them, the
    answer's output items do. Such a call is recorded unpriced, saying why, answered or
    streamed (``response.completed``'s answer), never at its tokens' price alone (it had
    been, a cent short a web search)."""
    api = ProviderApi(
        answers={"/v1/responses": "openai_responses_searches.json"},
        streams={"/v1/responses": "openai_responses_stream_searches.sse"},
    )
    sync_client, async_client = clients(api, stack, user_id="alice")
    client = sync_client if sync else async_client
    request = {**RESPONSES, "tools": [{"type": "web_search"}]}
    async with recorded_usage(stack.nc, topology) as recorded:
        await call(sync, client.responses.create, **request)
        stream = await call(sync, client.responses.create, **request, stream=True)
        seen = await in_thread(list, stream) if sync else [event async for event in stream]
        events = await recorded.exactly(stack.tracker, 2)
    assert seen[-1].type == "response.completed"
    assert_each(events, usage=O4_MINI_RESPONSE, cost=None, estimated_reason=None)
    for event in events:
        assert "2 web searches, 1 file searches" in (event.unpriced_reason or "")


@sync_and_async
async def test_an_image_edit_of_given_images_is_not_priced_at_the_text_rate(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """gpt-image-1 bills the images given to edit at $10 per million input tokens, the
    prompt's text at $5; ``Usage`` counts them together, so the call is recorded unpriced,
    saying why (its 323 image tokens had been priced as text, at half their rate)."""
    api = ProviderApi(answers={"/v1/images/edits": "openai_image_edit.json"})
    sync_client, async_client = clients(api, stack, user_id="alice")
    png = ("lighthouse.png", io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(64)), "image/png")
    edit = {"model": "gpt-image-1", "image": png, "prompt": "Add a boat"}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            await in_thread(sync_client.images.edit, **edit)
        else:
            await async_client.images.edit(**edit)
        [event] = await recorded.exactly(stack.tracker, 1)
    one = ImageUsage(count=1, size="1024x1024", quality="medium")
    assert event.usage == Usage(input_uncached=373, output_text=4160, images=one)
    assert event.cost is None and "323 input image tokens" in (event.unpriced_reason or "")


@sync_and_async
async def test_streamed_image_generation_and_transcription_record_their_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """``stream=True`` image generation (partial images, then the completed image with
    its usage) and transcription (text deltas, then ``transcript.text.done`` with its
    usage): each stream is watched and recorded from its final event."""
    api = ProviderApi()
    sync_client, async_client = clients(api, stack, user_id="alice")
    client = sync_client if sync else async_client
    audio = ("speech.mp3", io.BytesIO(b"ID3\x03\x00" + bytes(64)), "audio/mpeg")
    async with recorded_usage(stack.nc, topology) as recorded:
        images = await call(
            sync,
            client.images.generate,
            model="gpt-image-1",
            prompt="A lighthouse",
            stream=True,
            partial_images=1,
        )
        image_events = await in_thread(list, images) if sync else [e async for e in images]
        transcript = await call(
            sync,
            client.audio.transcriptions.create,
            model="gpt-4o-transcribe",
            file=audio,
            stream=True,
        )
        text_events = await in_thread(list, transcript) if sync else [e async for e in transcript]
        events = await recorded.exactly(stack.tracker, 2)
    assert [e.type for e in image_events] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert text_events[-1].text == "Imagine the wildest idea that you've ever had"
    by_kind = {event.kind: event for event in events}
    image = by_kind["image"]
    one = ImageUsage(count=1, size="1024x1024", quality="medium")
    # the partial image's 100 output tokens included
    assert (image.model, image.usage) == (
        "gpt-image-1",
        Usage(input_uncached=50, output_text=4260, images=one),
    )
    assert image.cost == per_million(a=("5", 50), b=("40", 4260))
    transcribed = by_kind["audio"]
    assert transcribed.model == "gpt-4o-transcribe"
    assert transcribed.usage == Usage(input_uncached=72, output_text=12)
    assert_each(events, provider="openai", user_id="alice", estimated_reason=None)


@sync_and_async
async def test_a_transcription_billed_by_tokens_is_not_priced_as_text(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """gpt-4o-transcribe bills its input audio tokens at 2.4x its text input rate, which
    ``Usage`` has no class for: streamed or not, the call is recorded unpriced, saying
    why, rather than at the text rate."""
    api = ProviderApi()
    sync_client, async_client = clients(api, stack)
    create = (sync_client if sync else async_client).audio.transcriptions.create

    def audio() -> tuple[str, io.BytesIO, str]:
        return ("speech.mp3", io.BytesIO(b"ID3\x03\x00" + bytes(64)), "audio/mpeg")

    async with recorded_usage(stack.nc, topology) as recorded:
        answer = await call(sync, create, model="gpt-4o-transcribe", file=audio())
        stream = await call(sync, create, model="gpt-4o-transcribe", file=audio(), stream=True)
        await in_thread(list, stream) if sync else [event async for event in stream]
        events = await recorded.exactly(stack.tracker, 2)
    assert answer.usage.input_token_details.audio_tokens == 72
    assert_each(
        events,
        model="gpt-4o-transcribe",
        kind="audio",
        usage=Usage(input_uncached=72, output_text=12),
        cost=None,
        estimated_reason=None,
    )
    for event in events:
        assert "72 input audio tokens" in (event.unpriced_reason or "")


# The SDK marks translations deprecated (shut down on 26 Feb 2027); they answer, and cost.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
@sync_and_async
async def test_an_audio_translation_records_its_duration_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = clients(api, stack, user_id="alice")
    create = (sync_client if sync else async_client).audio.translations.create

    async def translate(**kwargs: Any) -> Any:
        audio = ("german.mp3", io.BytesIO(b"ID3\x03\x00" + bytes(64)), "audio/mpeg")
        return await call(sync, create, model="whisper-1", file=audio, **kwargs)

    async with recorded_usage(stack.nc, topology) as recorded:
        verbose = await translate(response_format="verbose_json", budget_user_id="bob")
        plain = await translate()
        events = await recorded.exactly(stack.tracker, 2)
    assert verbose.duration == 8.47 and plain.text.startswith("Hello, my name is Wolfgang")
    by_user = {event.user_id: event for event in events}
    timed = by_user["bob"]
    assert (timed.model, timed.kind) == ("whisper-1", "audio")
    assert timed.usage == Usage(audio_seconds=Decimal("8.47"))
    assert timed.cost == Decimal("0.006") * Decimal("8.47") / 60
    assert timed.estimated_reason is None
    # A json translation is the text alone: no duration, so the pre-call estimate, $0,
    # and said so.
    untimed = by_user["alice"]
    assert (untimed.model, untimed.kind, untimed.usage) == ("whisper-1", "audio", Usage())
    assert_estimated(untimed, "tells no usage or duration")


@sync_and_async
async def test_the_sdks_parse_and_stream_helpers_are_recorded_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = clients(api, stack)
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:

            def calls() -> str:
                sync_client.chat.completions.parse(**CHAT)
                sync_client.responses.parse(**RESPONSES)
                with sync_client.chat.completions.stream(**CHAT) as stream:
                    text = "".join(e.delta for e in stream if e.type == "content.delta")
                with sync_client.responses.stream(**RESPONSES) as events:
                    events.until_done()
                return text

            text = await in_thread(calls)
        else:
            await async_client.chat.completions.parse(**CHAT)
            await async_client.responses.parse(**RESPONSES)
            async with async_client.chat.completions.stream(**CHAT) as stream:
                text = "".join([e.delta async for e in stream if e.type == "content.delta"])
            async with async_client.responses.stream(**RESPONSES) as events:
                await events.until_done()
        recorded_events = await recorded.exactly(stack.tracker, 4)
    assert text == "Hello! How can I help you today?"
    by_model: dict[str, list[Any]] = {}
    for event in recorded_events:
        by_model.setdefault(event.model, []).append(event.usage)
    assert by_model == {
        "gpt-4o-2024-08-06": [GPT_4O_CHAT],
        "gpt-4o-mini-2024-07-18": [GPT_4O_MINI_CHAT_STREAM],
        "o4-mini-2025-04-16": 2 * [O4_MINI_RESPONSE],
    }
    assert_each(recorded_events, estimated_reason=None)


@sync_and_async
async def test_the_sdks_stream_helpers_take_the_per_call_keywords(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """``chat.completions.stream`` and ``responses.stream`` had refused ``budget_user_id=``
    and the others with TypeError ('unexpected keyword argument'), though every other
    instrumented method takes them; they charge the request the helper sends as its block
    is entered, with the ``attribute_to`` blocks the helper was asked for in (not those
    it is entered in)."""
    api = ProviderApi()
    sync_client, async_client = clients(api, stack, user_id="alice")
    client = sync_client if sync else async_client
    with budget.attribute_to(tags={"feature": "summary"}):
        chat = client.chat.completions.stream(**CHAT, budget_user_id="bob")
        responses = client.responses.stream(**RESPONSES, budget_project_id="hermes")
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:

            def read() -> str:
                with chat as stream:
                    text = "".join(e.delta for e in stream if e.type == "content.delta")
                with responses as events:
                    events.until_done()
                return text

            text = await in_thread(read)
        else:
            async with chat as stream:
                text = "".join([e.delta async for e in stream if e.type == "content.delta"])
            async with responses as events:
                await events.until_done()
        events_recorded = await recorded.exactly(stack.tracker, 2)
    assert text == "Hello! How can I help you today?"
    charged = {(e.user_id, e.project_id, e.model, e.usage) for e in events_recorded}
    assert charged == {
        ("bob", None, "gpt-4o-mini-2024-07-18", GPT_4O_MINI_CHAT_STREAM),
        ("alice", "hermes", "o4-mini-2025-04-16", O4_MINI_RESPONSE),
    }
    assert_each(events_recorded, tags={"feature": "summary"}, estimated_reason=None)
    assert all(body is not None and "budget_user_id" not in body for body in api.requests)


@sync_and_async
async def test_the_beta_namespace_and_compaction_are_recorded_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """``client.beta`` has chat completions and Responses objects of its own, and a
    compaction runs the model too: each call is recorded once."""
    api = ProviderApi()
    sync_client, async_client = clients(api, stack)
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:

            def calls() -> None:
                sync_client.beta.chat.completions.create(**CHAT)
                sync_client.beta.chat.completions.parse(**CHAT)
                with sync_client.beta.chat.completions.stream(**CHAT) as stream:
                    stream.until_done()
                sync_client.beta.responses.create(**RESPONSES)
                sync_client.responses.compact(model="o4-mini", input="A haiku")

            await in_thread(calls)
        else:
            await async_client.beta.chat.completions.create(**CHAT)
            await async_client.beta.chat.completions.parse(**CHAT)
            async with async_client.beta.chat.completions.stream(**CHAT) as stream:
                await stream.until_done()
            await async_client.beta.responses.create(**RESPONSES)
            await async_client.responses.compact(model="o4-mini", input="A haiku")
        recorded_events = await recorded.exactly(stack.tracker, 5)
    assert [(e.model, e.usage) for e in recorded_events] == [
        ("gpt-4o-2024-08-06", GPT_4O_CHAT),
        ("gpt-4o-2024-08-06", GPT_4O_CHAT),
        ("gpt-4o-mini-2024-07-18", GPT_4O_MINI_CHAT_STREAM),
        ("o4-mini-2025-04-16", O4_MINI_RESPONSE),
        ("o4-mini", O4_MINI_RESPONSE),  # a compaction's answer names no model
    ]
    assert_each(recorded_events, estimated_reason=None)
    assert len(api.requests) == 5, "each call went out once"
