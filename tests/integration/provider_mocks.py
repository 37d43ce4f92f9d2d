"""The providers' HTTP APIs as an ``httpx2.MockTransport`` (the transport the SDKs' own
clients take) answering with the recorded bodies and SSE streams in provider_fixtures/,
and the usage events an instrumented call published, read back from NATS.

The SDKs parse these answers themselves; nothing reaches the network. Also what the
instrumentation must record for each answer, and the checks made of every event alike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from budget.tracker import UsageTracker
from events import ImageUsage, Topology, Usage, UsageRecorded, decode

from support import wait_for

FIXTURES = Path(__file__).parent / "provider_fixtures"
SENTINEL_USER = "sentinel"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _without_usage(sse: bytes) -> bytes:
    """An OpenAI chat (or completions) stream as sent without ``include_usage``: no usage
    chunk, no ``usage`` key in the others."""
    events = []
    for block in sse.decode().split("\n\n"):
        if not block.startswith("data: {"):
            events.append(block)
            continue
        chunk = json.loads(block.removeprefix("data: "))
        if not chunk["choices"]:
            continue
        chunk.pop("usage", None)
        events.append("data: " + json.dumps(chunk, separators=(",", ":")))
    return "\n\n".join(events).encode()


_JSON = {
    "/v1/chat/completions": "openai_chat.json",
    "/v1/completions": "openai_completion.json",
    "/v1/responses": "openai_responses.json",
    "/v1/responses/compact": "openai_responses_compact.json",
    "/v1/embeddings": "openai_embeddings.json",
    "/v1/images/generations": "openai_images.json",
    "/v1/images/edits": "openai_images.json",
    "/v1/audio/transcriptions": "openai_transcription.json",
    "/v1/audio/translations": "openai_translation.json",
    "/v1/messages": "anthropic_message.json",
}
_USAGE_CHUNK_SSE = {
    "/v1/chat/completions": "openai_chat_stream_usage.sse",
    "/v1/completions": "openai_completion_stream_usage.sse",
}
_SSE = {
    "/v1/responses": "openai_responses_stream.sse",
    "/v1/images/generations": "openai_images_stream.sse",
    "/v1/audio/transcriptions": "openai_transcription_stream.sse",
    "/v1/messages": "anthropic_message_stream.sse",
}

_STREAMED_UPLOAD = b'name="stream"\r\n\r\ntrue\r\n'
"""A multipart request's ``stream=True`` (audio transcriptions, image edits)."""


@dataclass
class ProviderApi:
    """Answers as the providers do; ``requests`` holds each request's JSON body (None
    for a multipart upload); ``fail_with``: the status every answer has while set;
    ``embedding_usage``: Gemini's embedding answers carry ``usageMetadata`` (else the
    vectors alone, as the Gemini API has long answered); ``answers`` and ``streams``: a
    path's answer or streamed answer, by fixture name, instead of the ones above;
    ``groq_usage_chunk``: Groq's streams end with a usage chunk when asked for one (as
    its API now does), besides the usage in their last chunk's ``x_groq``."""

    requests: list[dict[str, Any] | None] = field(default_factory=list)
    fail_with: int | None = None
    embedding_usage: bool = True
    answers: dict[str, str] = field(default_factory=dict)
    streams: dict[str, str] = field(default_factory=dict)
    groq_usage_chunk: bool = False

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        is_json = request.headers.get("content-type", "").startswith("application/json")
        body = json.loads(request.content) if is_json else None
        self.requests.append(body)
        if self.fail_with is not None:
            error = {"error": {"message": "overloaded", "type": "server_error"}}
            return httpx2.Response(self.fail_with, json=error)
        if request.url.host == "api.mistral.ai":
            return _mistral(body)
        if request.url.host == "api.groq.com" and body is not None and body.get("stream"):
            asked = (body.get("stream_options") or {}).get("include_usage") is True
            return _sse(_groq_stream(with_usage_chunk=asked and self.groq_usage_chunk))
        if ":streamGenerateContent" in path:
            return _sse(fixture(self.streams.get(path) or "gemini_generate_stream.sse"))
        if ":batchEmbedContents" in path:
            embed = (
                "gemini_embed.json" if self.embedding_usage else "gemini_embed_vectors_only.json"
            )
            return httpx2.Response(200, content=fixture(embed))
        if ":generateContent" in path:
            # With tools declared, the model first asks for a function's answer.
            asks = body is not None and "tools" in body
            asks = asks and b'"functionResponse"' not in request.content
            answer = "gemini_generate_function_call.json" if asks else "gemini_generate.json"
            return httpx2.Response(200, content=fixture(self.answers.get(path) or answer))
        streamed = body.get("stream") if body is not None else _STREAMED_UPLOAD in request.content
        if streamed:
            if path in _USAGE_CHUNK_SSE:
                sse = fixture(self.streams.get(path) or _USAGE_CHUNK_SSE[path])
                asked = (body.get("stream_options") or {}).get("include_usage")
                return _sse(sse if asked else _without_usage(sse))
            return _sse(fixture(self.streams.get(path) or _SSE[path]))
        answer = self.answers.get(path) or _JSON[path]
        if request.url.host == "api.deepseek.com":  # the OpenAI SDK pointed at DeepSeek
            answer = "deepseek_chat.json"
        if path == "/v1/audio/translations" and b"verbose_json" in request.content:
            answer = "openai_translation_verbose.json"  # the duration comes with the segments
        if path == "/v1/audio/transcriptions" and b"gpt-4o-transcribe" in request.content:
            answer = "openai_transcription_tokens.json"  # billed by tokens, not duration
        return httpx2.Response(
            200, content=fixture(answer), headers={"content-type": "application/json"}
        )

    def transport(self) -> httpx2.MockTransport:
        return httpx2.MockTransport(self.handle)

    def cut_transport(self, events: int) -> httpx2.MockTransport:
        """As ``transport``, but each stream's connection drops after its first ``events``
        SSE events (``httpx2.ReadError`` in the reader)."""

        def handle(request: httpx2.Request) -> httpx2.Response:
            answer = self.handle(request)
            if not answer.headers.get("content-type", "").startswith("text/event-stream"):
                return answer
            end = b"\r\n\r\n" if b"\r\n\r\n" in answer.content else b"\n\n"  # Gemini's: CRLF
            head = b"".join(block + end for block in answer.content.split(end)[:events])
            return httpx2.Response(200, headers=answer.headers, stream=_CutStream(head))

        return httpx2.MockTransport(handle)


class _CutStream(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A body that is ``head``, then a dropped connection."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        raise httpx2.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        raise httpx2.ReadError("connection reset by peer")


def _mistral(body: dict[str, Any] | None) -> httpx2.Response:
    """Mistral's chat API (the OpenAI SDK pointed at it): it refuses ``stream_options``,
    as any field it does not know, and sends a stream's usage in its last chunk unasked."""
    if body is not None and "stream_options" in body:
        refused = {
            "type": "extra_forbidden",
            "loc": ["body", "stream_options"],
            "msg": "Extra inputs are not permitted",
            "input": body["stream_options"],
        }
        error = {
            "object": "error",
            "message": {"detail": [refused]},
            "type": "invalid_request_error",
        }
        return httpx2.Response(422, json=error | {"param": None, "code": None})
    if body is not None and body.get("stream"):
        return _sse(fixture("mistral_chat_stream.sse"))
    return httpx2.Response(200, content=fixture("openai_chat.json"))


def _groq_stream(*, with_usage_chunk: bool) -> bytes:
    """Groq's chat stream (the OpenAI SDK pointed at it): its last chunk tells the usage in
    ``x_groq.usage``; ``with_usage_chunk``, a usage chunk follows it, as OpenAI's API
    sends one."""
    sse = fixture("groq_chat_stream.sse").decode()
    if not with_usage_chunk:
        return sse.encode()
    blocks = [block for block in sse.split("\n\n") if block.startswith("data: {")]
    last = json.loads(blocks[-1].removeprefix("data: "))
    usage = dict(last["x_groq"]["usage"])
    chunk = last | {"choices": [], "usage": usage, "x_groq": {"id": last["x_groq"]["id"]}}
    ending = "data: " + json.dumps(chunk, separators=(",", ":")) + "\n\ndata: [DONE]"
    return sse.replace("data: [DONE]", ending).encode()


def _sse(content: bytes) -> httpx2.Response:
    return httpx2.Response(200, content=content, headers={"content-type": "text/event-stream"})


@dataclass
class Recorded:
    events: list[UsageRecorded] = field(default_factory=list)

    async def exactly(self, tracker: UsageTracker, count: int) -> list[UsageRecorded]:
        """The ``count`` events of the calls made, once each: waits for them, then for a
        sentinel event recorded after them, and checks that no more came meanwhile."""

        async def arrived() -> bool:
            """the instrumented calls' events arrived"""
            return len(self.events) >= count

        await wait_for(arrived, within=30)
        await tracker.record_usage(
            model="gpt-4o", provider="openai", input_tokens=1, user_id=SENTINEL_USER
        )

        async def sentinel() -> bool:
            """the sentinel arrived"""
            return any(e.user_id == SENTINEL_USER for e in self.events)

        await wait_for(sentinel, within=30)
        calls = [e for e in self.events if e.user_id != SENTINEL_USER]
        assert len(calls) == count, calls
        return calls


@asynccontextmanager
async def recorded_usage(nc: Client, topology: Topology) -> AsyncIterator[Recorded]:
    """The usage events published while the block runs."""
    seen = Recorded()

    async def take(msg: Msg) -> None:
        event = decode(msg.data)
        assert isinstance(event, UsageRecorded)
        seen.events.append(event)

    subscription = await nc.subscribe(topology.event_subject(UsageRecorded.SUBJECT), cb=take)
    await nc.flush()
    try:
        yield seen
    finally:
        await subscription.unsubscribe()


def per_million(**rates_and_counts: tuple[str, int]) -> Decimal:
    """Sum of count x USD-per-million-tokens, exactly."""
    return sum(
        (Decimal(rate) * count / 1_000_000 for rate, count in rates_and_counts.values()),
        Decimal(0),
    )


# A test taking ``sync``, run once with each of the SDK's clients.
sync_and_async = pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])


async def in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """A sync client's call, from a thread: the tracker's loop is this test's."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def call(sync: bool, method: Any, **kwargs: Any) -> Any:
    """``method`` of a sync client called from a thread, or of an async one awaited."""
    return await (in_thread(method, **kwargs) if sync else method(**kwargs))


# What the instrumentation must record for the recorded answers above: the usage each
# tells, and its cost at the price list's rates.
GPT_4O_CHAT = Usage(input_uncached=93, input_cache_read=1024, output_text=46)
GPT_4O_MINI_CHAT_STREAM = Usage(input_uncached=19, output_text=10)
O4_MINI_RESPONSE = Usage(
    input_uncached=152, input_cache_read=2048, output_text=172, output_reasoning=448
)
# Reasoning tokens are billed as output: 172 + 448.
O4_MINI_RESPONSE_COST = per_million(a=("1.10", 152), b=("0.275", 2048), c=("4.40", 620))
TWO_IMAGES = ImageUsage(count=2, size="1024x1024", quality="medium")
GPT_IMAGE = Usage(input_uncached=50, output_text=8320, images=TWO_IMAGES)
# GPT Image models are billed by token, the images' output tokens included ($40 per million)
GPT_IMAGE_1_COST = per_million(a=("5", 50), b=("40", 8320))

CLAUDE_MESSAGE = Usage(
    input_uncached=12, input_cache_write=1800, input_cache_read=2400, output_text=95
)
CLAUDE_MESSAGE_COST = per_million(a=("3", 12), b=("3.75", 1800), c=("0.30", 2400), d=("15", 95))
CLAUDE_STREAM = Usage(input_uncached=472, output_text=89)
CLAUDE_STREAM_COST = per_million(a=("3", 472), b=("15", 89))


# The checks the instrumentation tests make of every event alike.
def assert_each(events: Iterable[UsageRecorded], **expected: Any) -> None:
    """Every event has the values given for the fields named."""
    for event in events:
        assert {name: getattr(event, name) for name in expected} == expected, event


def assert_estimated(event: UsageRecorded, because: str) -> None:
    """The event's usage is an estimate, and its reason says ``because``."""
    assert event.estimated_reason is not None
    assert because in event.estimated_reason


def assert_asked_for_usage(body: dict[str, Any] | None) -> None:
    """The streamed request's body, as sent: the instrumentation asked for the usage chunk."""
    assert body is not None
    assert body["stream_options"] == {"include_usage": True}
