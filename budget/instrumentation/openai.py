"""The official ``openai`` client (``OpenAI``, ``AsyncOpenAI`` and the Azure ones): chat
completions and the Responses API (``create``, and the SDK's ``parse`` and ``stream``
helpers), legacy text completions, embeddings, images (generated or edited) and audio
transcription and translation. (``images.create_variation`` is not: the SDK marks it
retired, its endpoint no longer answers.)

Streaming chat and text completions carry usage only in a final chunk, and only when
``stream_options.include_usage`` is set: it is set when the caller did not set it, and
that extra chunk (no choices, only usage) is then kept from the caller; but not for an API
that refuses the option and sends the usage unasked (Mistral's). Groq's tells it in its
last chunk's ``x_groq.usage`` too (read, the usage chunk after it replacing it). Streamed images
and transcriptions tell their usage in their last event (``*.completed``,
``transcript.text.done``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, MutableMapping
from typing import Any

import httpx2
import openai

from budget.checks import BudgetExceeded
from budget.instrumentation.lifecycle import Lifecycle, Measured, Plan, retry_after_headers
from budget.instrumentation.methods import Method, UsageObserver, estimated
from budget.instrumentation.prompts import (
    choices,
    output_allowance,
    request_tokens,
    requested_model,
)
from budget.instrumentation.stream_helpers import patch_scope_held
from budget.instrumentation.wrapping import patch, patch_copies, untracked
from budget.usage import normalize_usage
from events import ImageUsage, Usage

__all__ = ["PROVIDER", "install", "provider_error"]

PROVIDER = "openai"


def _asks_usage_chunk(kwargs: MutableMapping[str, Any]) -> bool:
    """Sets ``stream_options.include_usage`` on a streamed request that did not; True:
    it was set here, the usage chunk is to be kept from the caller."""
    if kwargs.get("stream") is not True:
        return False
    options = kwargs.get("stream_options")
    options = dict(options) if isinstance(options, Mapping) else {}
    if options.get("include_usage") is True:
        return False
    kwargs["stream_options"] = options | {"include_usage": True}
    return True


def _chat_plan(kwargs: MutableMapping[str, Any], *, ask_usage: bool = True) -> Plan:
    strip = _asks_usage_chunk(kwargs) if ask_usage else False
    return Plan(
        model=requested_model(kwargs),
        prompt_tokens=request_tokens(kwargs.get("messages")),
        max_output_tokens=output_allowance(kwargs, "max_completion_tokens", "max_tokens")
        * choices(kwargs, "n"),
        stream=kwargs.get("stream") is True,
        strip_usage_chunk=strip,
    )


def _completions_plan(kwargs: MutableMapping[str, Any]) -> Plan:
    strip = _asks_usage_chunk(kwargs)
    return Plan(
        model=requested_model(kwargs),
        prompt_tokens=request_tokens(kwargs.get("prompt"), kwargs.get("suffix")),
        # best_of: completions made (and paid for), of which n are returned
        max_output_tokens=output_allowance(kwargs, "max_tokens") * choices(kwargs, "n", "best_of"),
        stream=kwargs.get("stream") is True,
        strip_usage_chunk=strip,
        operation="text_completion",
    )


def _measured(response: Any) -> Measured:
    # A compaction's answer names no model: the request's is the one. The response is
    # kept for the price: it tells the service tier the call was served (and billed) in.
    return Measured.read(response.usage, getattr(response, "model", None), answer=response)


class _ChatObserver(UsageObserver):
    def see(self, chunk: Any) -> bool:
        self.model = chunk.model
        for choice in chunk.choices:
            self.chars += self._chars(choice)
        if chunk.usage is None:
            groq = _groq_usage(chunk)
            if groq is not None:
                # The same counts as a usage chunk after it would tell: either replaces
                # the other, never adds to it.
                self.usage, self.answer = groq, chunk
            return True
        self.usage, self.answer = chunk.usage, chunk
        return bool(chunk.choices) or not self.plan.strip_usage_chunk

    @staticmethod
    def _chars(choice: Any) -> int:
        delta = choice.delta
        if delta is None:  # "delta": null, as some OpenAI-compatible servers end a choice
            return 0
        chars = len(delta.content or "")
        for tool_call in delta.tool_calls or ():
            if tool_call.function is not None:
                chars += len(tool_call.function.arguments or "")
        return chars


def _groq_usage(chunk: Any) -> Any:
    """The usage Groq tells in a stream's last chunk, under ``x_groq`` (kept by the SDK as
    a field it does not know), whether or not a usage chunk follows; None elsewhere."""
    extension = (getattr(chunk, "model_extra", None) or {}).get("x_groq")
    return extension.get("usage") if isinstance(extension, Mapping) else None


class _CompletionsObserver(_ChatObserver):
    """Text completion chunks: the same usage chunk, each choice's ``text`` instead of a
    ``delta``."""

    @staticmethod
    def _chars(choice: Any) -> int:
        return len(choice.text or "")


def _responses_plan(kwargs: MutableMapping[str, Any]) -> Plan:
    return Plan(
        model=requested_model(kwargs),
        prompt_tokens=request_tokens(kwargs.get("input"), kwargs.get("instructions")),
        max_output_tokens=output_allowance(kwargs, "max_output_tokens"),
        stream=kwargs.get("stream") is True,
    )


_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_OUTPUT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)
"""The events whose ``delta`` is output the call is billed for (text, tool calls'
arguments, reasoning): what a stream cut short is charged, estimated."""


class _ResponsesObserver(UsageObserver):
    def see(self, event: Any) -> bool:
        if event.type in _OUTPUT_DELTAS:
            self.chars += len(event.delta or "")
        elif event.type in _RESPONSE_ENDS and event.response.usage is not None:
            self.usage, self.answer = event.response.usage, event.response
            self.model = event.response.model
        return True


def _embeddings_plan(kwargs: MutableMapping[str, Any]) -> Plan:
    tokens = request_tokens(kwargs.get("input"))
    return Plan(
        model=requested_model(kwargs), kind="embedding", estimate=Usage(embedding_tokens=tokens)
    )


def _images_plan(kwargs: MutableMapping[str, Any]) -> Plan:
    model = requested_model(kwargs, "dall-e-2")  # the API's default
    size = kwargs.get("size")
    quality = kwargs.get("quality")
    image = ImageUsage(
        count=kwargs.get("n") or 1,
        size=size if isinstance(size, str) and size != "auto" else "1024x1024",
        # "auto" may pick the dearest quality: the estimate errs high.
        quality=quality if isinstance(quality, str) and quality != "auto" else "high",
    )
    if model.startswith("dall-e") and image.quality == "high":
        image = image.model_copy(update={"quality": "standard"})
    return Plan(
        model=model,
        kind="image",
        estimate=Usage(images=image),
        stream=kwargs.get("stream") is True,
    )


def _images_measure(response: Any, plan: Plan) -> Measured:
    return _images(plan, len(response.data or ()), response)


def _images(plan: Plan, count: int, answer: Any) -> Measured:
    """``count`` images (the plan's when none is told), of the size and quality
    ``answer`` (a response, or a stream's completed event) tells, and its prompt tokens."""
    planned = plan.estimate.images if plan.estimate is not None else None
    if planned is None:
        raise ValueError("no image plan")
    image = ImageUsage(
        count=count or planned.count,
        size=getattr(answer, "size", None) or planned.size,
        quality=getattr(answer, "quality", None) or planned.quality,
    )
    usage = getattr(answer, "usage", None)
    prompt = usage.input_tokens if usage is not None else 0
    # GPT Image models are billed by these tokens, the images' included; DALL-E's answers
    # count none, and are priced per image.
    output = (usage.output_tokens or 0) if usage is not None else 0
    # ``usage`` kept: the tokens of images given to edit may have a price of their own.
    counted = normalize_usage(input_tokens=prompt, output_tokens=output, images=image)
    return Measured(counted, raw_usage=usage)


_IMAGE_DONE = frozenset({"image_generation.completed", "image_edit.completed"})


class _ImagesObserver:
    """A ``stream=True`` image generation or edit: partial images, then each image
    completed, with the call's usage."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.completed: list[Any] = []

    def see(self, event: Any) -> bool:
        if event.type in _IMAGE_DONE:
            self.completed.append(event)
        return True

    def measured(self) -> Measured:
        if not self.completed:
            return estimated(self.plan, "the stream ended before its image was completed")
        return _images(self.plan, len(self.completed), self.completed[-1])


def _speech_to_text_plan(kwargs: MutableMapping[str, Any]) -> Plan:
    return Plan(
        model=requested_model(kwargs),
        kind="audio",
        estimate=Usage(),
        stream=kwargs.get("stream") is True,
    )


def _speech_to_text_measure(response: Any, plan: Plan) -> Measured:
    usage = getattr(response, "usage", None)
    if usage is not None and usage.type in ("duration", "tokens"):
        return _speech_to_text_usage(usage)
    duration = getattr(response, "duration", None)  # verbose_json without usage
    if duration is None:
        raise ValueError(f"a {type(response).__name__} response tells no usage or duration")
    return Measured(normalize_usage(audio_seconds=duration))


def _speech_to_text_usage(usage: Any) -> Measured:
    """A transcription's usage: its audio's duration, or (the GPT-4o models) tokens."""
    if usage.type == "duration":
        return Measured(normalize_usage(audio_seconds=usage.seconds))
    # The usage object kept: its audio tokens are priced apart from text.
    tokens = normalize_usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
    return Measured(tokens, raw_usage=usage)


class _TranscriptionObserver(UsageObserver):
    """A ``stream=True`` transcription: text deltas, then ``transcript.text.done`` with
    the call's usage."""

    cut_short = "the stream ended before transcript.text.done"

    def see(self, event: Any) -> bool:
        if event.type == "transcript.text.delta":
            self.chars += len(event.delta)
        elif event.type == "transcript.text.done" and event.usage is not None:
            self.usage = event.usage
        return True

    def measured(self) -> Measured:
        if self.usage is None:
            return super().measured()
        return _speech_to_text_usage(self.usage)


_CHAT = Method(_chat_plan, lambda response, plan: _measured(response), _ChatObserver)
_CHAT_AS_ASKED = Method(
    functools.partial(_chat_plan, ask_usage=False),
    lambda response, plan: _measured(response),
    _ChatObserver,
)
"""For ``_USAGE_UNASKED``'s APIs: the request sent as the caller made it."""
_USAGE_UNASKED = frozenset({"mistral"})
"""Providers whose OpenAI-compatible chat API refuses ``stream_options`` (Mistral's answers
422, extra_forbidden, as for any field it does not know) and sends a stream's usage in its
last chunk unasked."""
_COMPLETIONS = Method(
    _completions_plan, lambda response, plan: _measured(response), _CompletionsObserver
)
_RESPONSES = Method(_responses_plan, lambda response, plan: _measured(response), _ResponsesObserver)
_EMBEDDINGS = Method(_embeddings_plan, lambda response, plan: _measured(response))
_IMAGES = Method(_images_plan, _images_measure, _ImagesObserver)
_SPEECH_TO_TEXT = Method(_speech_to_text_plan, _speech_to_text_measure, _TranscriptionObserver)


def install(client: Any, lifecycle: Lifecycle) -> None:
    patch_copies(client, lambda copy: install(copy, lifecycle))
    asynchronous = isinstance(client, openai.AsyncOpenAI)
    # The SDKs' stream() helpers call create (on the same object) as their block is
    # entered: they are covered, and take the budget_* keywords to it; their parse()
    # helpers post by themselves. ``client.beta`` has chat completions and Responses
    # objects of its own (the same calls, under another path).
    beta = getattr(client, "beta", None)
    chat = _CHAT_AS_ASKED if lifecycle.provider in _USAGE_UNASKED else _CHAT
    for owner, method, names in (
        (client.chat.completions, chat, ("create", "parse")),
        (getattr(getattr(beta, "chat", None), "completions", None), chat, ("create", "parse")),
        (client.responses, _RESPONSES, ("create", "parse", "compact")),
        (getattr(beta, "responses", None), _RESPONSES, ("create", "parse", "compact")),
    ):
        for name in names:
            if hasattr(owner, name):  # what this version of the SDK has
                patch(owner, name, lifecycle, method, asynchronous=asynchronous)
        if hasattr(owner, "stream"):
            patch_scope_held(owner, "stream")
    patch(client.completions, "create", lifecycle, _COMPLETIONS, asynchronous=asynchronous)
    patch(client.embeddings, "create", lifecycle, _EMBEDDINGS, asynchronous=asynchronous)
    for images in ("generate", "edit"):
        patch(client.images, images, lifecycle, _IMAGES, asynchronous=asynchronous)
    # Translations answer as transcriptions do: verbose_json tells the audio's duration.
    for audio in (client.audio.transcriptions, client.audio.translations):
        patch(audio, "create", lifecycle, _SPEECH_TO_TEXT, asynchronous=asynchronous)
    untracked(
        client.audio.speech,
        "create",
        "openai audio.speech.create",
        "speech is priced per character or audio token, and the answer is audio alone",
    )
    for resource, paid, why in _UNRECORDED:
        holder: Any = client
        for part in resource.split("."):  # "beta.realtime": client.beta.realtime
            holder = getattr(holder, part, None)
        for name in paid:
            if hasattr(holder, name):  # what this version of the SDK has
                untracked(holder, name, f"openai {resource}.{name}", why)


_SESSION = "a session's usage arrives over its connection, which is not read"
_SOCKET = "the responses made over a WebSocket arrive over its connection, which is not read"
_AGENT = (
    "an agent's turns are billed by the model calls it makes as it runs, after this call"
    " (a session's turns tell their usage later, best-effort)"
)
_UNRECORDED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("batches", ("create",), "a batch is billed as its requests complete, long after this call"),
    (
        "videos",
        ("create", "edit", "extend", "remix"),
        "video is priced per second of it, which usage events do not count",
    ),
    ("realtime", ("connect",), _SESSION),
    ("beta.realtime", ("connect",), _SESSION),
    ("responses", ("connect",), _SOCKET),
    ("beta.responses", ("connect",), _SOCKET),
    ("live", ("create", "connect"), _SESSION),
    (
        "decisions",
        ("create",),
        "decisions are billed at rates of their own, not the model's chat rates",
    ),
    (
        "fine_tuning.jobs",
        ("create",),
        "a fine-tuning job is billed by the tokens it trains on as it runs, long after this call",
    ),
    (
        "evals.runs",
        ("create",),
        "an eval run's model calls are billed as it runs them, long after this call",
    ),
    (
        "containers",
        ("create",),
        "a container is billed per session it is active, which usage events do not count",
    ),
    ("beta.agents.sessions", ("create",), _AGENT),
    ("beta.agents.sessions.events", ("create",), _AGENT),
    ("beta.agents.automations", ("create",), _AGENT),
    ("beta.agents.automations.invocations", ("create",), _AGENT),
)


def provider_error(refused: BudgetExceeded) -> BaseException:
    """The refusal as the API's own 429, so code that handles rate limits handles it (its
    ``retry-after`` header too)."""
    body = {"message": str(refused), "type": "budget_exceeded", "param": None, "code": None}
    request = httpx2.Request("POST", "https://api.openai.com/v1")
    response = httpx2.Response(429, headers=retry_after_headers(refused), request=request)
    error = openai.RateLimitError(f"Error code: 429 - {body}", response=response, body=body)
    error.__cause__ = refused
    return error
