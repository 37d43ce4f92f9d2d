"""Answers asked for through ``with_streaming_response`` (openai, anthropic), whose HTTP
body the caller reads itself (``parse()``, ``read()``, ``iter_lines()``, ``iter_bytes()``):
each call recorded once with the exact usage its body tells, as the caller reads it, and
its hold settled; a body not read whole recorded with what it told, by the documented
rule."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

import budget
from events import Topology, Usage

from enforcement import EnforcementStack
from provider_mocks import (
    CLAUDE_MESSAGE,
    CLAUDE_MESSAGE_COST,
    CLAUDE_STREAM,
    CLAUDE_STREAM_COST,
    GPT_4O_CHAT,
    GPT_4O_MINI_CHAT_STREAM,
    O4_MINI_RESPONSE,
    O4_MINI_RESPONSE_COST,
    ProviderApi,
    assert_asked_for_usage,
    assert_each,
    assert_estimated,
    per_million,
    recorded_usage,
    sync_and_async,
)
from support import wait_for

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Say hello"}]
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": HELLO, "max_tokens": 100}
RESPONSES: dict[str, Any] = {"model": "o4-mini", "input": "A haiku", "max_output_tokens": 1000}
MESSAGE: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Write a short poem about the sea"}],
}
GPT_4O_CHAT_COST = per_million(a=("2.50", 93), b=("1.25", 1024), c=("10", 46))
GPT_4O_MINI_CHAT_STREAM_COST = per_million(a=("0.15", 19), b=("0.60", 10))


async def under_a_block_policy(stack: EnforcementStack) -> None:
    """Each call's estimate held by the enforcer, so a hold left unsettled shows."""
    await stack.set_policy(limit_amount="100", action="block")
    await stack.enforcer_applies_policies()


async def holds_settled(stack: EnforcementStack) -> None:
    async def settled() -> bool:
        """every call's hold was settled by its usage"""
        return await stack.holds() == []

    await wait_for(settled)


class _Arriving(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A body arriving in ``pieces``, as over a network: not read until its reader reads."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def as_over_a_network(api: ProviderApi) -> httpx2.MockTransport:
    """``api``'s answers with their bodies arriving as they would: an SSE stream an event
    at a time, a JSON answer in two halves (a ``MockTransport`` answer made with its
    ``content`` would be read whole before its caller reads it)."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        answer = api.handle(request)
        content = answer.content
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            pieces = [event + b"\n\n" for event in content.split(b"\n\n")]
            pieces[-1] = pieces[-1].removesuffix(b"\n\n")
        else:
            pieces = [content[: len(content) // 2], content[len(content) // 2 :]]
        body = _Arriving([piece for piece in pieces if piece])
        assert b"".join(body.pieces) == content
        return httpx2.Response(answer.status_code, headers=answer.headers, stream=body)

    return httpx2.MockTransport(handle)


def openai_client(api: ProviderApi, stack: EnforcementStack, sync: bool) -> Any:
    transport = as_over_a_network(api)
    if sync:
        client: Any = openai.OpenAI(api_key="k", http_client=httpx2.Client(transport=transport))
    else:
        client = openai.AsyncOpenAI(
            api_key="k", http_client=httpx2.AsyncClient(transport=transport)
        )
    return budget.instrument(client, tracker=stack.tracker, user_id="alice")


def anthropic_client(api: ProviderApi, stack: EnforcementStack, sync: bool) -> Any:
    transport = as_over_a_network(api)
    if sync:
        client: Any = anthropic.Anthropic(
            api_key="k", http_client=httpx2.Client(transport=transport)
        )
    else:
        client = anthropic.AsyncAnthropic(
            api_key="k", http_client=httpx2.AsyncClient(transport=transport)
        )
    return budget.instrument(client, tracker=stack.tracker, user_id="alice")


async def read_body(sync: bool, create: Callable[..., Any], how: str, **request: Any) -> list[Any]:
    """Enter ``create(**request)``'s block and read its body ``how`` (the method of the
    SDK's response: ``parse``, ``read``, ``iter_lines``, ``iter_bytes``, ``iter_text``;
    ``stream`` iterates what ``parse()`` gives); what the caller got, as a list."""
    if sync:

        def read() -> list[Any]:
            with create(**request) as response:
                if how == "stream":
                    return list(response.parse())
                answer = getattr(response, how)()
                return list(answer) if how.startswith("iter_") else [answer]

        return await asyncio.to_thread(read)
    async with create(**request) as response:
        if how == "stream":
            return [item async for item in await response.parse()]
        if how.startswith("iter_"):
            return [part async for part in getattr(response, how)()]
        return [await getattr(response, how)()]


def data_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


@sync_and_async
async def test_openai_bodies_the_caller_reads_record_their_exact_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    await under_a_block_policy(stack)
    api = ProviderApi()
    client = openai_client(api, stack, sync)
    chat = client.with_streaming_response.chat.completions.create
    responses = client.with_streaming_response.responses.create
    async with recorded_usage(stack.nc, topology) as recorded:
        [parsed] = await read_body(sync, chat, "parse", **CHAT)
        lines = await read_body(sync, chat, "iter_lines", **CHAT, stream=True)
        chunks = await read_body(sync, chat, "stream", **CHAT, stream=True)
        sse = await read_body(sync, responses, "iter_bytes", **RESPONSES, stream=True)
        events = await recorded.exactly(stack.tracker, 4)
    assert parsed.usage.total_tokens == 1163  # the caller's parse() as before
    # The usage chunk the instrumentation asked for is kept from the caller's bytes, as
    # from a stream the SDK parses: the caller sees what it asked for.
    assert_asked_for_usage(api.requests[1])
    assert_asked_for_usage(api.requests[2])
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
    assert data_lines(lines) and all(chunk["choices"] for chunk in data_lines(lines))
    assert chunks and all(chunk.choices for chunk in chunks)
    assert b"response.completed" in b"".join(sse)
    by_usage = {event.usage: event for event in events}
    assert set(by_usage) == {GPT_4O_CHAT, GPT_4O_MINI_CHAT_STREAM, O4_MINI_RESPONSE}
    assert by_usage[GPT_4O_CHAT].cost == GPT_4O_CHAT_COST
    streamed = [e for e in events if e.usage == GPT_4O_MINI_CHAT_STREAM]
    assert_each(streamed, cost=GPT_4O_MINI_CHAT_STREAM_COST, model="gpt-4o-mini-2024-07-18")
    assert by_usage[O4_MINI_RESPONSE].cost == O4_MINI_RESPONSE_COST
    assert_each(events, user_id="alice", estimated_reason=None)
    assert all(event.reservation_id is not None for event in events)
    await holds_settled(stack)


@sync_and_async
async def test_json_bodies_read_any_way_record_their_exact_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    await under_a_block_policy(stack)
    api = ProviderApi()
    client = openai_client(api, stack, sync)
    chat = client.with_streaming_response.chat.completions.create
    embeddings = client.with_streaming_response.embeddings.create
    async with recorded_usage(stack.nc, topology) as recorded:
        [body] = await read_body(sync, chat, "read", **CHAT)
        text = await read_body(sync, chat, "iter_text", **CHAT)
        await read_body(sync, embeddings, "json", model="text-embedding-3-small", input="a b")
        events = await recorded.exactly(stack.tracker, 3)
    assert json.loads(body)["usage"]["total_tokens"] == 1163
    assert json.loads("".join(text))["usage"]["total_tokens"] == 1163
    chats = [e for e in events if e.kind == "chat"]
    assert_each(chats, usage=GPT_4O_CHAT, cost=GPT_4O_CHAT_COST)
    [embedding] = [e for e in events if e.kind == "embedding"]
    assert (embedding.usage, embedding.cost) == (
        Usage(embedding_tokens=16),
        per_million(a=("0.02", 16)),
    )
    assert_each(events, estimated_reason=None)
    await holds_settled(stack)


@sync_and_async
async def test_anthropic_bodies_the_caller_reads_record_their_exact_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    await under_a_block_policy(stack)
    api = ProviderApi()
    client = anthropic_client(api, stack, sync)
    messages = client.with_streaming_response.messages.create
    beta = client.beta.messages.with_streaming_response.create
    async with recorded_usage(stack.nc, topology) as recorded:
        [message] = await read_body(sync, messages, "parse", **MESSAGE)
        lines = await read_body(sync, messages, "iter_lines", **MESSAGE, stream=True)
        kinds = [
            event.type for event in await read_body(sync, beta, "stream", **MESSAGE, stream=True)
        ]
        events = await recorded.exactly(stack.tracker, 3)
    assert message.usage.output_tokens == 95
    assert "event: message_delta" in lines
    assert kinds[-2:] == ["message_delta", "message_stop"]
    [answered] = [e for e in events if e.usage == CLAUDE_MESSAGE]
    assert answered.cost == CLAUDE_MESSAGE_COST
    streamed = [e for e in events if e.usage == CLAUDE_STREAM]
    assert len(streamed) == 2
    assert_each(streamed, cost=CLAUDE_STREAM_COST)
    assert_each(events, model="claude-sonnet-4-5-20250929", estimated_reason=None)
    await holds_settled(stack)


@sync_and_async
async def test_a_body_left_unread_or_half_read_records_what_it_told_and_settles_its_hold(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """Leaving the block before the body's usage came: a stream is charged its prompt and
    the text it gave (as a stream abandoned half-way is), a JSON answer never read its
    pre-call estimate; no hold is kept until it expires."""
    await under_a_block_policy(stack)
    api = ProviderApi()
    client = openai_client(api, stack, sync)
    chat = client.with_streaming_response.chat.completions.create

    async def leave(how: str, **request: Any) -> None:
        if sync:

            def read() -> None:
                with chat(**request) as response:
                    if how == "first_words":
                        for line in response.iter_lines():
                            if "Hello" in line:
                                break

            await asyncio.to_thread(read)
            return
        async with chat(**request) as response:
            if how == "first_words":
                async for line in response.iter_lines():
                    if "Hello" in line:
                        break

    async with recorded_usage(stack.nc, topology) as recorded:
        await leave("unread", **CHAT)
        await leave("unread", **CHAT, stream=True)
        await leave("first_words", **CHAT, stream=True)
        events = await recorded.exactly(stack.tracker, 3)
    # "Say hello" + "user": 4 tokens of prompt.
    [unread_json] = [e for e in events if e.usage.output_text == 100]
    assert unread_json.usage == Usage(input_uncached=4, output_text=100)
    assert_estimated(unread_json, "not read")
    streams = sorted((e for e in events if e is not unread_json), key=lambda e: e.usage.output_text)
    # Unread: the prompt; read up to "Hello" (and "!" after it, the line reader may have
    # taken it): 5 or 6 characters, 2 tokens.
    assert [e.usage for e in streams] == [
        Usage(input_uncached=4),
        Usage(input_uncached=4, output_text=2),
    ]
    for event in streams:
        assert_estimated(event, "the stream ended before its usage arrived")
    assert all(event.reservation_id is not None for event in events)
    await holds_settled(stack)


class _StalledBody(httpx2.AsyncByteStream):
    """An answer's body that never arrives; ``reading`` is set once it is waited for."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.reading.set()
        await asyncio.Event().wait()
        yield b""


async def test_a_call_cancelled_while_its_caller_reads_its_body_is_recorded_and_settles_its_hold(
    stack: EnforcementStack, topology: Topology
) -> None:
    """A task cancelled while the body it reads arrives (a timeout around the call): the
    provider has answered, so the call is recorded at its pre-call estimate, settling the
    hold."""
    await under_a_block_policy(stack)
    body = _StalledBody()

    def stalled(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "application/json"}, stream=body)

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(stalled))
    client = budget.instrument(
        openai.AsyncOpenAI(api_key="k", http_client=http), tracker=stack.tracker
    )

    async def read_raw() -> None:
        async with client.with_streaming_response.chat.completions.create(**CHAT) as response:
            await response.parse()

    async with recorded_usage(stack.nc, topology) as recorded:
        calling = asyncio.create_task(read_raw())
        await body.reading.wait()
        calling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await calling
        [event] = await recorded.exactly(stack.tracker, 1)
    # "Say hello" + "user": 4 tokens; the whole output allowance, 100.
    assert event.usage == Usage(input_uncached=4, output_text=100)
    assert_estimated(event, "CancelledError")
    assert event.reservation_id is not None
    await holds_settled(stack)


@sync_and_async
async def test_a_with_raw_response_stream_read_as_lines_records_its_exact_usage_once(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """A ``with_raw_response`` stream whose caller reads the HTTP body's lines rather than
    the SDK stream ``parse()`` gives: the usage its body tells (it had been charged the
    prompt alone, once collected, and its caller given the usage chunk it never asked
    for)."""
    await under_a_block_policy(stack)
    api = ProviderApi()
    chat = openai_client(api, stack, sync).with_raw_response.chat.completions.create
    messages = anthropic_client(api, stack, sync).with_raw_response.messages.create

    async def lines(create: Callable[..., Any], **request: Any) -> list[str]:
        if sync:

            def read() -> list[str]:
                http = create(**request).http_response
                try:
                    return list(http.iter_lines())
                finally:
                    http.close()

            return await asyncio.to_thread(read)
        http = (await create(**request)).http_response
        try:
            return [line async for line in http.aiter_lines()]
        finally:
            await http.aclose()

    async with recorded_usage(stack.nc, topology) as recorded:
        chat_lines = await lines(chat, **CHAT, stream=True)
        message_lines = await lines(messages, **MESSAGE, stream=True)
        events = await recorded.exactly(stack.tracker, 2)
    assert_asked_for_usage(api.requests[0])
    assert data_lines(chat_lines) and all(chunk["choices"] for chunk in data_lines(chat_lines))
    assert "event: message_stop" in message_lines
    chat_event, message_event = sorted(events, key=lambda event: event.provider, reverse=True)
    assert (chat_event.usage, chat_event.cost) == (
        GPT_4O_MINI_CHAT_STREAM,
        GPT_4O_MINI_CHAT_STREAM_COST,
    )
    assert (message_event.usage, message_event.cost) == (CLAUDE_STREAM, CLAUDE_STREAM_COST)
    assert_each(events, estimated_reason=None)
    await holds_settled(stack)


@sync_and_async
async def test_bytes_read_in_chunks_of_a_size_come_in_that_size_without_the_usage_chunk(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """``iter_bytes(chunk_size)`` of a stream the usage chunk is left out of: chunks of
    that size (the last one shorter), making the stream the caller asked for."""
    api = ProviderApi()
    client = openai_client(api, stack, sync)
    create = client.with_streaming_response.completions.create
    request = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "stream": True}
    async with recorded_usage(stack.nc, topology) as recorded:
        if sync:

            def read() -> list[bytes]:
                with create(**request) as response:
                    return list(response.iter_bytes(7))

            chunks = await asyncio.to_thread(read)
        else:
            async with create(**request) as response:
                chunks = [chunk async for chunk in response.iter_bytes(7)]
        [event] = await recorded.exactly(stack.tracker, 1)
    assert {len(chunk) for chunk in chunks[:-1]} == {7} and 0 < len(chunks[-1]) <= 7
    sse = b"".join(chunks)
    assert sse.endswith(b"data: [DONE]\n\n")
    assert b'"choices":[]' not in sse
    assert_asked_for_usage(api.requests[0])
    assert (event.usage, event.estimated_reason) == (
        Usage(input_uncached=5, output_text=6),
        None,
    )
    assert event.cost == per_million(a=("1.50", 5), b=("2", 6))


@sync_and_async
async def test_a_body_whose_connection_drops_records_what_it_told_and_settles_its_hold(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """The connection lost as the caller reads the stream: the caller gets the error, the
    call is recorded with what the body told ("Hello!": 2 tokens, estimated); lost before
    its first event, the call never answered and its hold is released."""
    await under_a_block_policy(stack)
    clients = []
    for events in (3, 0):  # "", "Hello", "!"; nothing
        transport = ProviderApi().cut_transport(events=events)
        if sync:
            client: Any = openai.OpenAI(api_key="k", http_client=httpx2.Client(transport=transport))
        else:
            client = openai.AsyncOpenAI(
                api_key="k", http_client=httpx2.AsyncClient(transport=transport)
            )
        clients.append(budget.instrument(client, tracker=stack.tracker))
    async with recorded_usage(stack.nc, topology) as recorded:
        for client in clients:
            create = client.with_streaming_response.chat.completions.create
            with pytest.raises(httpx2.ReadError):
                await read_body(sync, create, "iter_lines", **CHAT, stream=True)
        [event] = await recorded.exactly(stack.tracker, 1)
    assert event.usage == Usage(input_uncached=4, output_text=2)
    assert_estimated(event, "the stream ended before its usage arrived")
    await holds_settled(stack)


@sync_and_async
async def test_a_stream_that_tells_an_error_before_any_answer_releases_its_hold(
    stack: EnforcementStack, topology: Topology, sync: bool
) -> None:
    """Anthropic answers an overloaded model with 200 and an `event: error` stream: the
    SDK raises it to the caller, nothing was made, and the hold is released, not charged
    the estimate (the prompt and the whole max_tokens); the next call is recorded."""
    await under_a_block_policy(stack)
    api = ProviderApi(streams={"/v1/messages": "anthropic_stream_overloaded.sse"})
    client = anthropic_client(api, stack, sync)
    create = client.with_streaming_response.messages.create
    async with recorded_usage(stack.nc, topology) as recorded:
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            await read_body(sync, create, "stream", **MESSAGE, stream=True)
        await holds_settled(stack)  # released: nothing recorded it
        api.streams.clear()
        await read_body(sync, create, "stream", **MESSAGE, stream=True)
        [event] = await recorded.exactly(stack.tracker, 1)
    assert event.cost == CLAUDE_STREAM_COST
