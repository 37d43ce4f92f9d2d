"""The official ``google-genai`` client (``genai.Client``; ``client.aio`` for async):
``generate_content``, ``generate_content_stream`` and ``embed_content``.

Every streamed chunk carries ``usage_metadata`` with the counts so far: the last chunk's
are the call's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from google.genai import chats, errors

from budget.checks import BudgetExceeded
from budget.instrumentation.lifecycle import (
    Attribution,
    Lifecycle,
    Measured,
    Plan,
    call_scope,
    in_scope,
    retry_after,
)
from budget.instrumentation.methods import Method, UsageObserver, estimated
from budget.instrumentation.prompts import (
    choices,
    output_allowance,
    request_tokens,
    requested_model,
)
from budget.instrumentation.wrapping import patch, replace, untracked
from events import Usage

__all__ = ["PROVIDER", "install", "provider_error"]

PROVIDER = "google"


def _plan(kwargs: MutableMapping[str, Any], *, stream: bool) -> Plan:
    config = kwargs.get("config")
    instruction = (
        config.get("system_instruction")
        if isinstance(config, Mapping)
        else getattr(config, "system_instruction", None)
    )
    return Plan(
        model=requested_model(kwargs),
        prompt_tokens=request_tokens(kwargs.get("contents"), instruction),
        max_output_tokens=output_allowance(config, "max_output_tokens")
        * choices(config, "candidate_count"),
        stream=stream,
        operation="generate_content",
    )


def _model(response: Any, plan: Plan) -> str:
    return getattr(response, "model_version", None) or plan.model


def _measure(response: Any, plan: Plan) -> Measured:
    # The response is kept for the price: the Google Search queries it was grounded with
    # are billed apart from the tokens.
    return Measured.read(response.usage_metadata, _model(response, plan), answer=response)


class _Observer(UsageObserver):
    cut_short = "the stream ended before any usage_metadata"

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.grounded: list[Any] = []
        """The candidates of the last chunk that told their grounding (the searches)."""
        self.unfinished: set[int] = set()
        """The candidates seen that have not told their finish_reason yet."""
        self.finished = False

    def see(self, chunk: Any) -> bool:
        self.model = _model(chunk, self.plan)
        if chunk.usage_metadata is not None:
            self.usage = chunk.usage_metadata
        grounded = [c for c in chunk.candidates or () if c.grounding_metadata is not None]
        self.grounded = grounded or self.grounded
        for candidate in chunk.candidates or ():
            self._follow(candidate)
            content = candidate.content
            for part in (content.parts if content is not None else None) or ():
                self.chars += len(part.text or "")
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            self.finished = True  # a prompt refused: no candidate will come
        return True

    def _follow(self, candidate: Any) -> None:
        index = candidate.index or 0
        if candidate.finish_reason is None:
            self.unfinished.add(index)
        else:
            self.unfinished.discard(index)
            self.finished = True

    def measured(self) -> Measured:
        # The answer, as an unstreamed one would be, for the price (``_measure``).
        self.answer = {"usage_metadata": self.usage, "candidates": self.grounded}
        if self.usage is None or (self.finished and not self.unfinished):
            return super().measured()
        # Each chunk's counts are those so far: the call went on past them.
        why = "the stream ended before its last chunk: the counts of the last one received"
        return Measured.read(self.usage, self.model, why, answer=self.answer)


def _embed_plan(kwargs: MutableMapping[str, Any]) -> Plan:
    tokens = request_tokens(kwargs.get("contents"))
    return Plan(
        model=requested_model(kwargs), kind="embedding", estimate=Usage(embedding_tokens=tokens)
    )


def _embed_measure(response: Any, plan: Plan) -> Measured:
    """The answer's ``usage_metadata``, else (Vertex AI) each embedding's token count,
    else the estimate: the Gemini API's answer has long carried the vectors alone."""
    usage = response.usage_metadata
    if usage is not None and usage.prompt_token_count is not None:
        return Measured(Usage(embedding_tokens=usage.prompt_token_count), plan.model)
    counts = [
        embedding.statistics.token_count
        for embedding in response.embeddings or ()
        if embedding.statistics is not None and embedding.statistics.token_count is not None
    ]
    if counts:
        return Measured(Usage(embedding_tokens=round(sum(counts))), plan.model)
    return estimated(plan, "the embedding answer tells no token count: the contents' text")


_GENERATE = Method(lambda kwargs: _plan(kwargs, stream=False), _measure)
_GENERATE_STREAM = Method(lambda kwargs: _plan(kwargs, stream=True), _measure, _Observer)
_EMBED = Method(_embed_plan, _embed_measure)


def install(client: Any, lifecycle: Lifecycle) -> None:
    for models, asynchronous in ((client.models, False), (client.aio.models, True)):
        # generate_content may send several requests (automatic function calling, one a
        # round; continuations) and answer with the last one's usage alone: each request
        # is checked and recorded where the SDK sends it, when this SDK has those methods.
        sends = "_" if hasattr(models, "_generate_content") else ""
        patch(models, f"{sends}generate_content", lifecycle, _GENERATE, asynchronous=asynchronous)
        patch(
            models,
            f"{sends}generate_content_stream",
            lifecycle,
            _GENERATE_STREAM,
            asynchronous=asynchronous,
        )
        if sends:  # the public methods take the budget_* keywords to the requests they send
            for name in ("generate_content", "generate_content_stream"):
                replace(models, name, _keywords_passed(asynchronous, stream="stream" in name))
        patch(models, "embed_content", lifecycle, _EMBED, asynchronous=asynchronous)
        for name, why in _UNRECORDED:
            if hasattr(models, name):  # what this version of the SDK has
                untracked(models, name, f"google-genai models.{name}", why)
    for batches in (client.batches, client.aio.batches):
        for name in ("create", "create_embeddings"):
            if hasattr(batches, name):  # what this version of the SDK has
                untracked(
                    batches,
                    name,
                    f"google-genai batches.{name}",
                    "a batch is billed as its requests complete, long after this call",
                )
    for resource, names, why in _UNRECORDED_RESOURCES:
        for holder in (getattr(client, resource, None), getattr(client.aio, resource, None)):
            for name in names:
                if hasattr(holder, name):  # what this version of the SDK has
                    untracked(holder, name, f"google-genai {resource}.{name}", why)
    untracked(
        client.aio.live,
        "connect",
        "google-genai aio.live.connect",
        "a live session's usage arrives over its connection, which is not read",
    )
    # A chat asks its client's models for a stream only as its own is read, so nothing
    # of the client's is called inside the block a stream is asked for in; and its
    # methods' own signatures refuse the budget_* keywords. ``client.chats`` is a new
    # object each time: the chat classes are the one place to hold the scope. (A chat of
    # a client not instrumented sees no difference: its requests are charged nowhere.)
    for chat, asynchronous in ((chats.Chat, False), (chats.AsyncChat, True)):
        replace(chat, "send_message", _keywords_passed(asynchronous, stream=False))
        replace(chat, "send_message_stream", _keywords_passed(asynchronous, stream=True))


def _keywords_passed(
    asynchronous: bool, *, stream: bool
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A public method that takes the ``budget_*`` keywords off its call and holds them,
    over the ``attribute_to`` blocks the call is made in, as the enclosing scope while it,
    and for a stream its iteration, sends the requests: a stream read after its block is
    left is still charged as it was asked."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        if asynchronous:

            async def passing(*args: Any, **kwargs: Any) -> Any:
                scope = call_scope(kwargs)
                if scope is None:
                    return await original(*args, **kwargs)
                with in_scope(scope):
                    answer = await original(*args, **kwargs)
                return _ScopedAsyncIterator(answer, scope) if stream else answer

            return passing

        def passing_sync(*args: Any, **kwargs: Any) -> Any:
            scope = call_scope(kwargs)
            if scope is None:
                return original(*args, **kwargs)
            with in_scope(scope):
                answer = original(*args, **kwargs)
            return _ScopedIterator(answer, scope) if stream else answer

        return passing_sync

    return make


class _Scoped:
    """The SDK's stream, its requests (sent as it is read, or closed) charged to
    ``scope``; anything else is the SDK stream's own."""

    def __init__(self, items: Any, scope: Attribution) -> None:
        self._items, self._scope = items, scope

    def __getattr__(self, name: str) -> Any:
        return getattr(self._items, name)


class _ScopedIterator(_Scoped):
    def __iter__(self) -> _ScopedIterator:
        return self

    def __next__(self) -> Any:
        with in_scope(self._scope):
            return next(self._items)

    def close(self) -> None:
        with in_scope(self._scope):
            self._items.close()


class _ScopedAsyncIterator(_Scoped):
    def __aiter__(self) -> _ScopedAsyncIterator:
        return self

    async def __anext__(self) -> Any:
        with in_scope(self._scope):
            return await self._items.__anext__()

    async def aclose(self) -> None:
        with in_scope(self._scope):
            await self._items.aclose()


_IMAGES = "images are priced per image, which usage events do not count"
_UNRECORDED = (
    ("generate_images", _IMAGES),
    ("edit_image", _IMAGES),
    ("upscale_image", _IMAGES),
    ("recontext_image", _IMAGES),
    ("segment_image", _IMAGES),
    ("generate_videos", "video is priced per second of it, which usage events do not count"),
)


_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_UNRECORDED_RESOURCES = (
    (
        "interactions",
        ("create",),
        "the Interactions API's answers are not read by the instrumentation",
    ),
    ("decisions", ("create",), "the decisions' answers are not read by the instrumentation"),
    (
        "tunings",
        ("tune",),
        "a tuning job is billed by the tokens it trains on as it runs, long after this call",
    ),
    (
        "file_search_stores",
        ("upload_to_file_search_store", "import_file"),
        "indexing a file is billed at its embedding model's rate for the file's tokens,"
        " which the answer (an operation still running) does not count",
    ),
    (
        "caches",
        ("create", "update"),
        "cached content is billed per token and hour it is stored, which usage events do not count",
    ),
)


def provider_error(refused: BudgetExceeded) -> BaseException:
    """The refusal as the API's own 429 (``RESOURCE_EXHAUSTED``, with its ``RetryInfo``
    when the refusal says when to try again)."""
    error_body: dict[str, Any] = {
        "code": 429,
        "message": str(refused),
        "status": "RESOURCE_EXHAUSTED",
    }
    seconds = retry_after(refused)
    if seconds is not None:
        error_body["details"] = [{"@type": _RETRY_INFO, "retryDelay": f"{seconds}s"}]
    body = {"error": error_body}
    error = errors.ClientError(429, body)
    error.__cause__ = refused
    return error
