"""The official ``anthropic`` client (``Anthropic``, ``AsyncAnthropic``): messages
(``create`` and the SDK's ``parse``), streamed (``stream=True``, or the
``messages.stream(...)`` helper, which reads the same events) or not; the same methods of
``beta.messages``, whose answers and events have the same shape and usage.

In a stream, ``message_start`` carries the input (and cache) counts and a first output
count; each ``message_delta`` carries the counts so far, cumulative: the last one
replaces the earlier ones, it is never added to them.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import anthropic
import httpx2
from anthropic.resources.messages import AsyncMessages

from budget.checks import BudgetExceeded
from budget.instrumentation.lifecycle import Lifecycle, Measured, Plan, retry_after_headers
from budget.instrumentation.methods import Method
from budget.instrumentation.prompts import (
    estimated_tokens,
    output_allowance,
    request_tokens,
    requested_model,
)
from budget.instrumentation.stream_helpers import patch_stream_manager
from budget.instrumentation.wrapping import patch, patch_copies, untracked

__all__ = ["PROVIDER", "install", "provider_error"]

PROVIDER = "anthropic"


def _plan(kwargs: MutableMapping[str, Any], *, stream: bool = False) -> Plan:
    return Plan(
        model=requested_model(kwargs),
        prompt_tokens=request_tokens(kwargs.get("messages"), kwargs.get("system")),
        max_output_tokens=output_allowance(kwargs, "max_tokens"),
        stream=stream or kwargs.get("stream") is True,
    )


def _measure(response: Any, plan: Plan) -> Measured:
    return Measured.read(response.usage, response.model)


_COUNTS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    # Priced apart from the counts (``budget.usage.modality_tokens``): 1-hour cache writes,
    # in message_start's; web searches, in message_delta's.
    "cache_creation",
    "server_tool_use",
    # How the call was served (``budget.usage.service_tiers``): a batch, Priority Tier,
    # fast mode or US-only inference is not billed at the standard rates.
    "service_tier",
    "speed",
    "inference_geo",
)


class _Observer:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.counts: dict[str, Any] = {}
        self.model: str | None = None
        self.chars = 0
        self.finished = False

    def see(self, event: Any) -> bool:
        if event.type == "message_start":
            self.model = event.message.model
            self._take(event.message.usage)
        elif event.type == "content_block_delta":
            delta = event.delta
            self.chars += len(getattr(delta, "text", None) or "")
            self.chars += len(getattr(delta, "partial_json", None) or "")
            self.chars += len(getattr(delta, "thinking", None) or "")
        elif event.type == "message_delta":
            self._take(event.usage)
            self.finished = True
        return True

    def _take(self, usage: Any) -> None:
        """The counts (and their details) so far: each present one replaces the one
        before."""
        for name in _COUNTS:
            value = getattr(usage, name, None)
            if value is not None:
                self.counts[name] = value

    def measured(self) -> Measured:
        if self.finished:
            return Measured.read(self.counts, self.model)
        seen = estimated_tokens(self.chars)
        counts = dict(self.counts)
        if "input_tokens" not in counts:
            counts["input_tokens"] = self.plan.prompt_tokens
        counts["output_tokens"] = max(counts.get("output_tokens", 0), seen)
        why = (
            "the stream ended before its final usage (message_delta): the text received, estimated"
        )
        return Measured.read(counts, self.model, why)


_MESSAGES = Method(_plan, _measure, _Observer)
_MESSAGES_STREAM = Method(lambda kwargs: _plan(kwargs, stream=True), _measure, _Observer)


def install(client: Any, lifecycle: Lifecycle) -> None:
    patch_copies(client, lambda copy: install(copy, lifecycle))
    # Told by the resource: the async Bedrock and Vertex AI clients are no AsyncAnthropic.
    asynchronous = isinstance(client.messages, AsyncMessages)
    for messages, path in ((client.messages, "messages"), (client.beta.messages, "beta.messages")):
        # parse (structured outputs) posts by itself, not through create.
        for name in ("create", "parse"):
            patch(messages, name, lifecycle, _MESSAGES, asynchronous=asynchronous)
        patch_stream_manager(
            messages, "stream", lifecycle, _MESSAGES_STREAM, asynchronous=asynchronous
        )
        batches = getattr(messages, "batches", None)
        if hasattr(batches, "create"):  # not through Bedrock, Vertex AI or Foundry
            untracked(
                batches,
                "create",
                f"anthropic {path}.batches.create",
                "a batch is billed as its requests complete, long after",
            )


def provider_error(refused: BudgetExceeded) -> BaseException:
    """The refusal as the API's own 429 (``rate_limit_error``, with ``retry-after``)."""
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": str(refused)}}
    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
    response = httpx2.Response(429, headers=retry_after_headers(refused), request=request)
    error = anthropic.RateLimitError(f"Error code: 429 - {body}", response=response, body=body)
    error.__cause__ = refused
    return error
