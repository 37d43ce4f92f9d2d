"""OpenTelemetry for recorded calls (the ``budget[otel]`` extra): a span, or attributes on
the caller's span, with the GenAI semantic conventions, and the
``gen_ai.client.token.usage`` histogram.

Off until ``budget.otel.enable()`` is called; importing ``budget`` never imports
OpenTelemetry, only this module does. The telemetry goes to the global tracer and meter
providers unless others are given, so an app that already exports its traces gets these
with the rest.

The cost is ``budget.cost.usd``, a decimal string: money is exact ``Decimal`` end to end
and a double would turn $0.1 into 0.1000000000000000055...; a backend that sums it parses
the string. An unpriced call has no cost attribute but ``budget.cost.unpriced_reason``,
never a $0 that would hide it from every total.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.metrics import Histogram, MeterProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from budget.pricing.genai import canonical_provider
from budget.recorded import (
    FailedCall,
    InstrumentedCall,
    add_failure_observer,
    add_observer,
    remove_failure_observer,
    remove_observer,
)
from events import CallKind, UsageRecorded

__all__ = ["disable", "enable", "span_attributes"]

_SCOPE = "budget-manager"
# The semantic conventions' advised buckets for gen_ai.client.token.usage and (seconds)
# gen_ai.client.operation.duration.
_TOKEN_BUCKETS = [4.0**n for n in range(14)]
_DURATION_BUCKETS = [0.01 * 2**n for n in range(14)]
# gen_ai.operation.name for each call kind; the conventions name no operation for
# images or audio, so those keep the kind's own name. An instrumented call may tell its
# own (``InstrumentedCall.operation``: text_completion, generate_content).
_OPERATIONS = {"chat": "chat", "embedding": "embeddings"}
# gen_ai.provider.name's well-known values, for the providers this product's pricing names
# otherwise; the others (openai, anthropic, groq, ...) are the same in both. Google's is
# any Google generative AI endpoint: the google-genai client reaches Gemini or Vertex AI.
_PROVIDER_NAMES = {"google": "gcp.gen_ai", "mistral": "mistral_ai", "x-ai": "x_ai"}

AttributeValue = str | int | bool


@dataclass(frozen=True, slots=True)
class _Telemetry:
    tracer: Tracer
    token_usage: Histogram
    duration: Histogram
    on_current_span: bool

    def __call__(self, event: UsageRecorded, call: InstrumentedCall | None) -> None:
        ended_ns = time.time_ns()
        attributes = dict(span_attributes(event, call))
        if call is not None and call.error is not None:  # a stream cut short by it
            attributes["error.type"] = _error_type(call.error)
        # An instrumented call's span covers it, from its budget check to its answer (a
        # stream's last item); a recorded one's is the instant it names.
        start = call.started_ns if call else int(event.occurred_at.timestamp() * 1e9)
        span = self._span(attributes, start)
        if span is not None:
            if "error.type" in attributes:
                span.set_status(Status(StatusCode.ERROR))
            span.end(end_time=max(start, ended_ns))
        common = {key: attributes[key] for key in _METRIC_KEYS if key in attributes}
        if call is not None:
            self.duration.record(max(ended_ns - call.started_ns, 0) / 1e9, common)
        if event.usage.total_tokens:
            inputs, outputs = _token_counts(event)
            self.token_usage.record(inputs, common | {"gen_ai.token.type": "input"})
            if event.kind != "embedding":  # none is output: a 0 would skew the histogram
                self.token_usage.record(outputs, common | {"gen_ai.token.type": "output"})

    def failed(self, failed: FailedCall) -> None:
        """An instrumented call that ended in an error: its span (status ERROR) and
        duration, with the conventions' ``error.type``."""
        ended_ns = time.time_ns()
        attributes = _call_attributes(failed.provider, failed.kind, failed.call)
        attributes["error.type"] = _error_type(failed.error)
        span = self._span(attributes, failed.call.started_ns)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR))
            span.end(end_time=max(failed.call.started_ns, ended_ns))
        common = {key: attributes[key] for key in _METRIC_KEYS if key in attributes}
        self.duration.record(max(ended_ns - failed.call.started_ns, 0) / 1e9, common)

    def _span(self, attributes: Mapping[str, AttributeValue], start: int) -> Span | None:
        """The attributes on the caller's span (``on_current_span``, when one is
        recording: None), else a span of their own from ``start``, for the caller to
        end."""
        current = trace.get_current_span()
        if self.on_current_span and current.is_recording():
            current.set_attributes(attributes)
            return None
        span = self.tracer.start_span(
            _span_name(attributes), kind=SpanKind.CLIENT, attributes=attributes, start_time=start
        )
        return span


_METRIC_KEYS = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "error.type",
)


def _span_name(attributes: Mapping[str, AttributeValue]) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, or the operation alone for a
    request that named no model, as the conventions name a span."""
    model = attributes.get("gen_ai.request.model")
    operation = str(attributes["gen_ai.operation.name"])
    return operation if model is None else f"{operation} {model}"


_enabled: _Telemetry | None = None


def enable(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    on_current_span: bool = False,
) -> None:
    """Emit telemetry for every call a tracker records from now on, in this process.

    Each call becomes a CLIENT span named ``<operation> <requested model>`` (a child of
    the current span, if any): an instrumented call's lasts from its budget check to its
    answer (a stream's, to its end) and is also a point of the
    ``gen_ai.client.operation.duration`` histogram; a ``record_usage`` call's is the
    instant of its ``occurred_at``. An instrumented call that fails (the provider's error,
    a timeout, a cancellation) records nothing, but is a span too, with status ERROR and
    the conventions' ``error.type`` (the HTTP status, else the exception's class), and a
    point of the duration histogram. With ``on_current_span``, the attributes go on the
    current span instead, when one is recording: for apps that wrap each provider call in
    their own span and record its usage inside it. Calling it again replaces the previous
    setup."""
    global _enabled
    disable()
    tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
    meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
    token_usage = meter.create_histogram(
        "gen_ai.client.token.usage",
        unit="{token}",
        description="Number of input and output tokens used",
        explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
    )
    duration = meter.create_histogram(
        "gen_ai.client.operation.duration",
        unit="s",
        description="GenAI operation duration",
        explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
    )
    _enabled = _Telemetry(tracer, token_usage, duration, on_current_span)
    add_observer(_enabled)
    add_failure_observer(_enabled.failed)


def disable() -> None:
    """Stop emitting telemetry for recorded calls."""
    global _enabled
    if _enabled is not None:
        remove_observer(_enabled)
        remove_failure_observer(_enabled.failed)
        _enabled = None


def span_attributes(
    event: UsageRecorded, call: InstrumentedCall | None = None
) -> Mapping[str, AttributeValue]:
    """The GenAI semantic conventions' attributes of one recorded call, plus its cost.
    An instrumented ``call``'s request names the model asked for (none when it named
    none), its answer the one that answered (``gpt-4o-2024-08-06`` for ``gpt-4o``); a
    ``record_usage`` call's model is all there is, taken as the one asked for."""
    usage = event.usage
    inputs, outputs = _token_counts(event)
    attributes: dict[str, AttributeValue]
    if call is None:
        attributes = {
            "gen_ai.operation.name": _OPERATIONS.get(event.kind, event.kind),
            "gen_ai.provider.name": _provider_name(event.provider),
            "gen_ai.request.model": event.model,
        }
    else:
        attributes = _call_attributes(event.provider, event.kind, call)
    attributes |= {
        "gen_ai.usage.input_tokens": inputs,
        "gen_ai.usage.output_tokens": outputs,
        "gen_ai.usage.cache_read.input_tokens": usage.input_cache_read,
        "gen_ai.usage.cache_creation.input_tokens": usage.input_cache_write,
        "gen_ai.usage.reasoning.output_tokens": usage.output_reasoning,
        "budget.event_id": str(event.event_id),
    }
    if event.cost is not None:
        attributes["budget.cost.usd"] = str(event.cost)
    if event.unpriced_reason is not None:
        attributes["budget.cost.unpriced_reason"] = event.unpriced_reason
    if event.estimated_reason is not None:
        attributes["budget.usage.estimated_reason"] = event.estimated_reason
    return attributes


def _call_attributes(
    provider: str, kind: CallKind, call: InstrumentedCall
) -> dict[str, AttributeValue]:
    """What the conventions say of an instrumented call, whatever its outcome."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": call.operation or _OPERATIONS.get(kind, kind),
        "gen_ai.provider.name": _provider_name(provider),
    }
    if call.requested_model is not None:
        attributes["gen_ai.request.model"] = call.requested_model
    if call.response_model is not None:
        attributes["gen_ai.response.model"] = call.response_model
    return attributes


def _error_type(error: BaseException) -> str:
    """The conventions' ``error.type``: the HTTP status the provider answered with (the
    SDKs' ``status_code``, google-genai's ``code``), else the exception's class name
    (``APITimeoutError``, ``CancelledError``)."""
    for name in ("status_code", "code"):
        status = getattr(error, name, None)
        if isinstance(status, int) and not isinstance(status, bool):
            return str(status)
    return type(error).__qualname__


def _provider_name(provider: str) -> str:
    """The conventions' name of a provider a caller may have spelled its own way
    ("xAI", "Gemini")."""
    canonical = canonical_provider(provider)
    return _PROVIDER_NAMES.get(canonical, canonical)


def _token_counts(event: UsageRecorded) -> tuple[int, int]:
    """Input (cached and embedded included, as the conventions count them) and output."""
    usage = event.usage
    return usage.input_tokens + usage.embedding_tokens, usage.output_tokens
