"""``budget.instrument`` on the real ``anthropic`` and ``google-genai`` clients, sync and
async, over a mock transport answering with recorded bodies and streams."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import httpx2
import pytest
from google import genai
from google.genai import errors, types

import budget
from budget import BudgetExceeded
from events import Topology, Usage

from enforcement import EnforcementStack
from provider_mocks import (
    CLAUDE_MESSAGE,
    CLAUDE_MESSAGE_COST,
    CLAUDE_STREAM,
    CLAUDE_STREAM_COST,
    ProviderApi,
    assert_each,
    assert_estimated,
    in_thread,
    per_million,
    recorded_usage,
    sync_and_async,
)

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Write a short poem about the sea"}]
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": HELLO}
# What every recorded Claude call of alice's says besides its usage and cost.
ALICES_CLAUDE_CALLS = {
    "provider": "anthropic",
    "model": "claude-sonnet-4-5-20250929",
    "user_id": "alice",
    "estimated_reason": None,
}


def anthropic_clients(api: ProviderApi, stack: EnforcementStack, **options: Any) -> Any:
    sync = anthropic.Anthropic(api_key="k", http_client=httpx2.Client(transport=api.transport()))
    asynchronous = anthropic.AsyncAnthropic(
        api_key="k", http_client=httpx2.AsyncClient(transport=api.transport())
    )
    for client in (sync, asynchronous):
        budget.instrument(client, tracker=stack.tracker, **options)
    return sync, asynchronous


def gemini_client(api: ProviderApi, stack: EnforcementStack, **options: Any) -> genai.Client:
    http = types.HttpOptions(
        httpx_client=httpx2.Client(transport=api.transport()),
        httpx_async_client=httpx2.AsyncClient(transport=api.transport()),
    )
    client = genai.Client(api_key="k", http_options=http)
    return budget.instrument(client, tracker=stack.tracker, **options)


@sync_and_async
async def test_anthropic_messages_parsed_and_streamed_record_exact_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = anthropic_clients(api, stack, user_id="alice")
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            await in_thread(sync_client.messages.create, **MESSAGE)
            await in_thread(sync_client.messages.parse, **MESSAGE)
            stream = await in_thread(sync_client.messages.create, **MESSAGE, stream=True)
            kinds = [event.type for event in await in_thread(list, stream)]
        else:
            await async_client.messages.create(**MESSAGE)
            await async_client.messages.parse(**MESSAGE)  # the SDK's structured-output helper
            stream = await async_client.messages.create(**MESSAGE, stream=True)
            kinds = [event.type async for event in stream]
        events = await recorded.exactly(stack.tracker, 3)
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    message, parsed, streamed = sorted(events, key=lambda e: e.usage.output_tokens, reverse=True)
    assert_each((message, parsed), usage=CLAUDE_MESSAGE, cost=CLAUDE_MESSAGE_COST)
    # message_delta's 89 output tokens are the total, not 89 more than message_start's 2.
    assert (streamed.usage, streamed.cost) == (CLAUDE_STREAM, CLAUDE_STREAM_COST)
    assert_each(events, **ALICES_CLAUDE_CALLS)


VERTEX_MODEL = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5"


@sync_and_async
async def test_anthropic_clients_of_vertex_ai_record_exact_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """``AnthropicVertex`` and ``AsyncAnthropicVertex`` (as the Bedrock ones) have no
    message batches, and the async one is no ``AsyncAnthropic``: instrumenting either had
    raised AttributeError. Their calls are recorded as the API's, priced as Google's."""
    api = ProviderApi(
        answers={f"{VERTEX_MODEL}:rawPredict": "anthropic_message.json"},
        streams={f"{VERTEX_MODEL}:streamRawPredict": "anthropic_message_stream.sse"},
    )
    vertex = {"region": "us-east5", "project_id": "p", "access_token": "token"}
    if sync:
        http: Any = httpx2.Client(transport=api.transport())
        client: Any = anthropic.AnthropicVertex(**vertex, http_client=http)
    else:
        http = httpx2.AsyncClient(transport=api.transport())
        client = anthropic.AsyncAnthropicVertex(**vertex, http_client=http)
    budget.instrument(client, tracker=stack.tracker, user_id="alice")

    def sync_calls() -> None:
        client.messages.create(**MESSAGE)
        with client.messages.stream(**MESSAGE) as helper:
            helper.until_done()

    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            await in_thread(sync_calls)
        else:
            await client.messages.create(**MESSAGE)
            async with client.messages.stream(**MESSAGE) as helper:
                await helper.until_done()
        events = await recorded.exactly(stack.tracker, 2)
    message, streamed = sorted(events, key=lambda e: e.usage.output_tokens, reverse=True)
    assert (message.usage, message.cost) == (CLAUDE_MESSAGE, CLAUDE_MESSAGE_COST)
    assert (streamed.usage, streamed.cost) == (CLAUDE_STREAM, CLAUDE_STREAM_COST)
    assert_each(events, **{**ALICES_CLAUDE_CALLS, "provider": "google"})


async def leave_the_event_stream_early(client: anthropic.AsyncAnthropic) -> None:
    stream = await client.messages.create(**MESSAGE, stream=True)
    async with stream:
        # message_start, content_block_start (the SDK drops the ping), then "Okay",
        # ", here is a" and " short poem"
        for _ in range(5):
            await stream.__anext__()


async def leave_the_stream_helper_early(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(**MESSAGE) as stream:
        async for text in stream.text_stream:
            if text == " short poem":
                break


@pytest.mark.parametrize(
    "leave_early",
    [leave_the_event_stream_early, leave_the_stream_helper_early],
    ids=["event-stream", "stream-helper"],
)
async def test_an_anthropic_stream_left_before_its_final_usage_records_what_it_consumed(
    stack: EnforcementStack, topology: Topology, leave_early: Callable[[Any], Awaitable[None]]
) -> None:
    api = ProviderApi()
    _, client = anthropic_clients(api, stack)
    async with recorded_usage(stack.nc, topology) as recorded:
        await leave_early(client)
        [event] = await recorded.exactly(stack.tracker, 1)
    # message_start's input (472) and the text received, "Okay, here is a short poem",
    # 26 characters: 7 tokens.
    assert event.usage == Usage(input_uncached=472, output_text=7)
    assert_estimated(event, "message_delta")


@sync_and_async
async def test_streams_whose_connection_drops_record_what_they_received_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """The connection lost mid-stream: the caller gets the error, and each call is
    recorded once with what arrived, marked as an estimate. A Gemini chunk's counts are
    those so far: a stream cut before its last chunk had been recorded at them as exact."""
    api = ProviderApi()
    # message_start, content_block_start, ping, then "Okay", ", here is a", " short poem"
    cut = api.cut_transport(events=6)
    claude_sync = anthropic.Anthropic(api_key="k", http_client=httpx2.Client(transport=cut))
    claude_async = anthropic.AsyncAnthropic(
        api_key="k", http_client=httpx2.AsyncClient(transport=cut)
    )
    for claude in (claude_sync, claude_async):
        budget.instrument(claude, tracker=stack.tracker, user_id="alice")
    http = types.HttpOptions(
        httpx_client=httpx2.Client(transport=api.cut_transport(events=2)),
        httpx_async_client=httpx2.AsyncClient(transport=api.cut_transport(events=2)),
    )
    gemini = budget.instrument(
        genai.Client(api_key="k", http_options=http), tracker=stack.tracker, user_id="alice"
    )
    fox = {"model": "gemini-2.5-flash", "contents": "Fox"}
    texts: list[str] = []

    def read_sync() -> None:
        with pytest.raises(anthropic.APIConnectionError):
            for event in claude_sync.messages.create(**MESSAGE, stream=True):
                if event.type == "content_block_delta":
                    texts.append(event.delta.text)
        with pytest.raises(httpx2.ReadError):
            for chunk in gemini.models.generate_content_stream(**fox):
                texts.append(chunk.text or "")

    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            await in_thread(read_sync)
        else:
            with pytest.raises(anthropic.APIConnectionError):
                async for event in await claude_async.messages.create(**MESSAGE, stream=True):
                    if event.type == "content_block_delta":
                        texts.append(event.delta.text)
            with pytest.raises(httpx2.ReadError):
                async for chunk in await gemini.aio.models.generate_content_stream(**fox):
                    texts.append(chunk.text or "")
        events = await recorded.exactly(stack.tracker, 2)
    assert "".join(texts) == "Okay, here is a short poem" + "The quick brown fox jumps over"
    claude, gemini_call = sorted(events, key=lambda e: e.provider)
    # message_start's input and the text received, 26 characters: 7 tokens.
    assert claude.usage == Usage(input_uncached=472, output_text=7)
    assert_estimated(claude, "message_delta")
    # The second chunk's counts: the last received.
    assert gemini_call.usage == Usage(input_uncached=11, output_text=6, output_reasoning=40)
    assert_estimated(gemini_call, "before its last chunk")


@sync_and_async
async def test_the_anthropic_stream_helper_records_the_final_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = anthropic_clients(api, stack, user_id="alice")
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:

            def read() -> tuple[str, Any]:
                with sync_client.messages.stream(**MESSAGE, budget_project_id="poems") as stream:
                    return "".join(stream.text_stream), stream.get_final_message()

            text, final = await in_thread(read)
        else:
            async with async_client.messages.stream(**MESSAGE, budget_project_id="poems") as s:
                text = "".join([piece async for piece in s.text_stream])
                final = await s.get_final_message()
        [event] = await recorded.exactly(stack.tracker, 1)
    assert text == "Okay, here is a short poem about the sea:\n\nWaves fold light into the shore."
    assert final.usage.output_tokens == 89
    assert api.requests[0] is not None and api.requests[0]["stream"] is True
    assert (event.usage, event.cost) == (CLAUDE_STREAM, CLAUDE_STREAM_COST)
    assert (event.model, event.user_id, event.project_id) == (
        "claude-sonnet-4-5-20250929",
        "alice",
        "poems",
    )
    assert event.estimated_reason is None


async def test_an_anthropic_streams_1_hour_cache_writes_and_web_searches_are_not_priced_as_text(
    stack: EnforcementStack, topology: Topology
) -> None:
    """A stream's 1-hour cache writes (message_start's ``cache_creation``) cost 2x the
    input rate, not a 5-minute write's 1.25x, and its web searches (message_delta's
    ``server_tool_use``) $10 a thousand: as for the same answer unstreamed, the call is
    recorded unpriced, saying why, rather than at the wrong rates."""
    stream = "anthropic_message_stream_1h_cache_web_search.sse"
    api = ProviderApi(streams={"/v1/messages": stream})
    sync_client, async_client = anthropic_clients(api, stack, user_id="alice")

    def read_the_helper() -> Any:
        with sync_client.messages.stream(**MESSAGE) as helper:
            return helper.get_final_message()

    async with recorded_usage(stack.nc, topology) as recorded:
        async for _ in await async_client.messages.create(**MESSAGE, stream=True):
            pass
        final = await in_thread(read_the_helper)
        events = await recorded.exactly(stack.tracker, 2)
    assert final.usage.cache_creation.ephemeral_1h_input_tokens == 1800
    assert_each(
        events,
        usage=Usage(input_uncached=472, input_cache_write=1800, output_text=89),
        cost=None,
        **ALICES_CLAUDE_CALLS,
    )
    for event in events:
        assert "1800 1-hour cache write tokens, 1 web searches" in (event.unpriced_reason or "")


@sync_and_async
async def test_an_anthropic_call_in_priority_tier_or_fast_mode_is_not_priced_standard(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """Anthropic bills Priority Tier by the capacity committed to and fast mode at up to
    6x (Opus 4.6: $30 / $150 per million against $5 / $25); the usage says which served
    the call (``service_tier``, and ``speed`` in a stream's message_start). An event has
    no tier, so such a call is recorded unpriced, saying why (they had been priced at the
    standard rates)."""
    api = ProviderApi(
        answers={"/v1/messages": "anthropic_message_priority.json"},
        streams={"/v1/messages": "anthropic_message_stream_fast.sse"},
    )
    sync_client, async_client = anthropic_clients(api, stack, user_id="alice")
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            await in_thread(sync_client.messages.create, **MESSAGE)
            await in_thread(
                list, await in_thread(sync_client.messages.create, **MESSAGE, stream=True)
            )
        else:
            await async_client.messages.create(**MESSAGE)
            async for _ in await async_client.messages.create(**MESSAGE, stream=True):
                pass
        events = await recorded.exactly(stack.tracker, 2)
    fast, priority = sorted(events, key=lambda event: event.model)  # claude-opus-4-6 first
    assert (priority.usage, priority.cost) == (CLAUDE_MESSAGE, None)
    assert "the 'priority' service tier" in (priority.unpriced_reason or "")
    assert (fast.model, fast.usage, fast.cost) == ("claude-opus-4-6", CLAUDE_STREAM, None)
    assert "the 'fast' speed" in (fast.unpriced_reason or "")


@sync_and_async
async def test_anthropic_clients_and_raw_responses_made_from_an_instrumented_one_are_recorded(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = anthropic_clients(api, stack, project_id="apollo")
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:

            def calls() -> tuple[list[Any], list[str]]:
                sync_client.with_options(max_retries=0).messages.create(**MESSAGE)
                raw = sync_client.with_raw_response.messages.create(**MESSAGE)
                streaming = sync_client.with_streaming_response.messages.create
                with streaming(**MESSAGE) as response:
                    messages = [raw.parse(), response.parse()]
                raw = sync_client.with_raw_response.messages.create(**MESSAGE, stream=True)
                return messages, [event.type for event in raw.parse()]

            messages, kinds = await in_thread(calls)
        else:
            await async_client.with_options(max_retries=0).messages.create(**MESSAGE)
            raw = await async_client.with_raw_response.messages.create(**MESSAGE)
            streaming = async_client.with_streaming_response.messages.create
            async with streaming(**MESSAGE) as response:
                messages = [await raw.parse(), await response.parse()]
            raw = await async_client.with_raw_response.messages.create(**MESSAGE, stream=True)
            kinds = [event.type async for event in await raw.parse()]
        events = await recorded.exactly(stack.tracker, 4)
    assert [message.usage.output_tokens for message in messages] == [95, 95]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    # The raw stream, read through the caller's parse(): message_delta's final counts.
    [streamed] = [e for e in events if e.usage.output_text == 89]
    assert streamed.usage == CLAUDE_STREAM
    assert (streamed.project_id, streamed.estimated_reason) == ("apollo", None)
    events.remove(streamed)
    assert_each(events, usage=CLAUDE_MESSAGE, project_id="apollo", estimated_reason=None)


@sync_and_async
async def test_anthropic_beta_messages_record_exact_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    sync_client, async_client = anthropic_clients(api, stack, user_id="alice")
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            beta = sync_client.beta.messages

            def calls() -> tuple[Any, list[str], str]:
                message = beta.create(**MESSAGE, betas=["context-1m-2025-08-07"])
                beta.parse(**MESSAGE)
                kinds = [event.type for event in beta.create(**MESSAGE, stream=True)]
                with beta.stream(**MESSAGE) as stream:
                    return message, kinds, "".join(stream.text_stream)

            message, kinds, text = await in_thread(calls)
        else:
            aio = async_client.beta.messages
            message = await aio.create(**MESSAGE, betas=["context-1m-2025-08-07"])
            await aio.parse(**MESSAGE)
            kinds = [event.type async for event in await aio.create(**MESSAGE, stream=True)]
            async with aio.stream(**MESSAGE) as stream:
                text = "".join([piece async for piece in stream.text_stream])
        events = await recorded.exactly(stack.tracker, 4)
    assert isinstance(message, anthropic.types.beta.BetaMessage)
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert text == "Okay, here is a short poem about the sea:\n\nWaves fold light into the shore."
    answered = [e for e in events if e.usage.output_text == 95]
    streamed = [e for e in events if e.usage.output_text == 89]
    assert (len(answered), len(streamed)) == (2, 2)
    assert_each(answered, usage=CLAUDE_MESSAGE, cost=CLAUDE_MESSAGE_COST)
    assert_each(streamed, usage=CLAUDE_STREAM, cost=CLAUDE_STREAM_COST)
    assert_each(events, **ALICES_CLAUDE_CALLS)


async def test_anthropic_refusal_in_the_providers_shape(
    stack: EnforcementStack, topology: Topology
) -> None:
    await stack.set_policy(limit_amount="0.0001", action="block")
    await stack.enforcer_applies_policies()
    api = ProviderApi()
    _, client = anthropic_clients(api, stack, refusal="provider_error")
    big = {"model": "claude-sonnet-4-5", "max_tokens": 50_000, "messages": HELLO}
    with pytest.raises(anthropic.RateLimitError) as refused:
        await client.messages.create(**big)
    cause = refused.value.__cause__
    assert isinstance(cause, BudgetExceeded) and cause.result.retry_after is not None
    retry_after = refused.value.response.headers["retry-after"]
    assert retry_after == str(math.ceil(cause.result.retry_after))
    with pytest.raises(anthropic.RateLimitError):
        async with client.messages.stream(**big):
            pass
    assert api.requests == []


@sync_and_async
async def test_gemini_content_and_its_stream_record_exact_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    client = gemini_client(api, stack, project_id="apollo")
    config = {"max_output_tokens": 2048}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            models = client.models
            await in_thread(models.generate_content, model="gemini-2.5-flash", contents="AI?")
            chunks = await in_thread(
                lambda: list(
                    models.generate_content_stream(
                        model="gemini-2.5-flash",
                        contents="Fox",
                        config=config,
                        budget_user_id="streamer",
                    )
                )
            )
        else:
            aio = client.aio.models
            await aio.generate_content(model="gemini-2.5-flash", contents="AI?", config=config)
            stream = await aio.generate_content_stream(
                model="gemini-2.5-flash", contents="Fox", budget_user_id="streamer"
            )
            chunks = [chunk async for chunk in stream]
        events = await recorded.exactly(stack.tracker, 2)
    assert (
        "".join(chunk.text or "" for chunk in chunks)
        == "The quick brown fox jumps over the lazy dog."
    )
    content, streamed = sorted(events, key=lambda e: e.usage.output_tokens, reverse=True)
    assert content.usage == Usage(input_uncached=8, output_text=212, output_reasoning=913)
    assert content.cost == per_million(a=("0.30", 8), b=("2.50", 1125))
    # The last chunk's counts, not the sum of every chunk's.
    assert streamed.usage == Usage(input_uncached=11, output_text=10, output_reasoning=40)
    assert streamed.cost == per_million(a=("0.30", 11), b=("2.50", 50))
    assert_each(events, provider="google", model="gemini-2.5-flash", project_id="apollo")
    assert (content.user_id, streamed.user_id) == (None, "streamer")


@sync_and_async
async def test_a_gemini_stream_read_after_its_attribute_to_block_is_charged_to_that_block(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """The SDK sends a stream's request when it is first read, which a web app does after
    its handler has left the ``attribute_to`` block (a streamed answer): the call is
    charged as it was asked, to the block's user, not the client's (it had been, and the
    user's spending counted against nobody's limit)."""
    api = ProviderApi()
    client = gemini_client(api, stack, user_id="service")
    request = {"model": "gemini-2.5-flash", "contents": "Fox"}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            with budget.attribute_to(user_id="bob"):
                stream = client.models.generate_content_stream(**request)
            await in_thread(list, stream)
        else:
            with budget.attribute_to(user_id="bob"):
                stream = await client.aio.models.generate_content_stream(**request)
            [_ async for _ in stream]
        [event] = await recorded.exactly(stack.tracker, 1)
    assert (event.user_id, event.usage.output_text) == ("bob", 10)


@sync_and_async
async def test_a_gemini_chat_stream_read_after_its_attribute_to_block_is_charged_to_that_block(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """A chat's ``send_message_stream`` sends nothing until it is first read (the SDK's
    chat asks its models for the stream then): read after the block (a web app's
    streamed answer), it had been charged to the client's user, not the block's."""
    api = ProviderApi()
    client = gemini_client(api, stack, user_id="service")
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            chat = client.chats.create(model="gemini-2.5-flash")
            with budget.attribute_to(user_id="bob", tags={"feature": "chat"}):
                stream = chat.send_message_stream("Fox")
            chunks = await in_thread(list, stream)
        else:
            achat = client.aio.chats.create(model="gemini-2.5-flash")
            with budget.attribute_to(user_id="bob", tags={"feature": "chat"}):
                astream = await achat.send_message_stream("Fox")
            chunks = [chunk async for chunk in astream]
        [event] = await recorded.exactly(stack.tracker, 1)
    assert "".join(chunk.text or "" for chunk in chunks) == (
        "The quick brown fox jumps over the lazy dog."
    )
    assert (event.user_id, event.tags, event.usage.output_text) == ("bob", {"feature": "chat"}, 10)
    # The chat's history took the turn, as it does uninstrumented.
    history = (chat if sync else achat).get_history()
    assert [content.role for content in history] == ["user", "model", "model", "model"]


@sync_and_async
async def test_a_gemini_chats_messages_take_the_per_call_keywords(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """A chat's ``send_message`` and ``send_message_stream`` had refused
    ``budget_user_id=`` and the others with TypeError ('unexpected keyword argument'),
    though the client's own methods take them; they charge the requests the message sends
    (the stream's, as it is read, after its ``attribute_to`` block is left), over the
    blocks it is sent in."""
    api = ProviderApi()
    client = gemini_client(api, stack, user_id="service")
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            chat = client.chats.create(model="gemini-2.5-flash")
            with budget.attribute_to(tags={"feature": "chat"}):
                await in_thread(chat.send_message, "Fox", budget_user_id="bob")
                stream = chat.send_message_stream("Fox", budget_project_id="hermes")
            await in_thread(list, stream)
        else:
            achat = client.aio.chats.create(model="gemini-2.5-flash")
            with budget.attribute_to(tags={"feature": "chat"}):
                await achat.send_message("Fox", budget_user_id="bob")
                astream = await achat.send_message_stream("Fox", budget_project_id="hermes")
            [_ async for _ in astream]
        events = await recorded.exactly(stack.tracker, 2)
    assert {(e.user_id, e.project_id, e.kind) for e in events} == {
        ("bob", None, "chat"),
        ("service", "hermes", "chat"),
    }
    assert_each(events, tags={"feature": "chat"}, estimated_reason=None)


@sync_and_async
async def test_a_gemini_answer_grounded_with_google_search_is_not_priced_at_its_tokens_alone(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """Grounding with Google Search is billed apart from the tokens (gemini-2.5-flash: $35
    a thousand grounded prompts, 30 times this answer's tokens), and the usage does not
    count it; the answer's ``grounding_metadata`` tells the queries. Such a call is
    recorded unpriced, saying why, answered or streamed, never at its tokens' price alone
    (it had been)."""
    api = ProviderApi(
        answers={"/v1/models/gemini-2.5-flash:generateContent": "gemini_generate_grounded.json"},
        streams={
            "/v1/models/gemini-2.5-flash:streamGenerateContent": (
                "gemini_generate_stream_grounded.sse"
            )
        },
    )
    client = gemini_client(api, stack, user_id="alice")
    search = types.GenerateContentConfig(tools=[types.Tool(google_search=types.GoogleSearch())])
    request = {"model": "gemini-2.5-flash", "contents": "AI?", "config": search}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            await in_thread(client.models.generate_content, **request)
            await in_thread(lambda: list(client.models.generate_content_stream(**request)))
        else:
            await client.aio.models.generate_content(**request)
            [_ async for _ in await client.aio.models.generate_content_stream(**request)]
        events = await recorded.exactly(stack.tracker, 2)
    answered, streamed = sorted(events, key=lambda e: e.usage.output_tokens, reverse=True)
    assert answered.usage == Usage(input_uncached=8, output_text=212, output_reasoning=913)
    assert streamed.usage == Usage(input_uncached=11, output_text=10, output_reasoning=40)
    assert_each(events, model="gemini-2.5-flash", cost=None, estimated_reason=None)
    assert "2 web searches" in (answered.unpriced_reason or "")
    assert "1 web searches" in (streamed.unpriced_reason or "")


def get_weather(city: str) -> str:
    """The weather in ``city``."""
    return f"sunny in {city}"


@sync_and_async
async def test_each_round_of_gemini_automatic_function_calling_is_recorded(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """With a Python function as a tool, one generate_content sends a request per round
    (the model asks for the function's answer, then answers) and returns the last one:
    both are paid, both are recorded."""
    api = ProviderApi()
    client = gemini_client(api, stack)
    config = types.GenerateContentConfig(tools=[get_weather])
    call = {
        "model": "gemini-2.5-flash",
        "contents": "Weather in Paris?",
        "config": config,
        "budget_user_id": "bob",  # taken off the call, charged on each of its requests
    }
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            answer = await in_thread(lambda: client.models.generate_content(**call))
        else:
            answer = await client.aio.models.generate_content(**call)
        events = await recorded.exactly(stack.tracker, 2)
    assert answer.text == "AI learns patterns from examples to make predictions."
    assert len(api.requests) == 2
    assert [e.usage for e in events] == [
        Usage(input_uncached=61, output_text=15, output_reasoning=76),
        Usage(input_uncached=8, output_text=212, output_reasoning=913),
    ]
    assert_each(events, user_id="bob")


@sync_and_async
async def test_gemini_embeddings_record_their_token_count_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    api = ProviderApi()
    client = gemini_client(api, stack, project_id="apollo")
    # 27 + 22 characters: 13 tokens estimated
    request = {
        "model": "gemini-embedding-001",
        "contents": ["What is the meaning of life?", "How does the sea move?"],
    }
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:
            answer = await in_thread(client.models.embed_content, **request)
            api.embedding_usage = False
            await in_thread(client.models.embed_content, **request)
        else:
            answer = await client.aio.models.embed_content(**request)
            api.embedding_usage = False
            await client.aio.models.embed_content(**request)
        events = await recorded.exactly(stack.tracker, 2)
    assert answer.embeddings is not None and len(answer.embeddings) == 2
    counted, estimated = sorted(events, key=lambda e: e.estimated_reason is not None)
    assert (counted.kind, counted.usage) == ("embedding", Usage(embedding_tokens=11))
    assert counted.cost == per_million(a=("0.15", 11))
    assert counted.estimated_reason is None
    # An answer with the vectors alone: the contents' text, estimated, and said so.
    assert (estimated.kind, estimated.usage) == ("embedding", Usage(embedding_tokens=13))
    assert estimated.cost == per_million(a=("0.15", 13))
    assert_estimated(estimated, "no token count")
    assert_each(events, provider="google", model="gemini-embedding-001", project_id="apollo")


async def test_gemini_refusal_in_the_providers_shape(
    stack: EnforcementStack, topology: Topology
) -> None:
    await stack.set_policy(limit_amount="0.0001", action="block")
    await stack.enforcer_applies_policies()
    api = ProviderApi()
    client = gemini_client(api, stack, refusal="provider_error")
    big = {"max_output_tokens": 1_000_000}
    with pytest.raises(errors.ClientError) as refused:
        await client.aio.models.generate_content(model="gemini-2.5-pro", contents="x", config=big)
    assert refused.value.code == 429
    cause = refused.value.__cause__
    assert isinstance(cause, BudgetExceeded) and cause.result.retry_after is not None
    # When to try again, as the API's own 429 says it.
    [retry_info] = refused.value.details["error"]["details"]
    assert retry_info == {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": f"{math.ceil(cause.result.retry_after)}s",
    }
    assert api.requests == []
