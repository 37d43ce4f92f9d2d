"""``budget.otel``: each recorded call becomes a GenAI span (or attributes on the caller's
span) and two points of ``gen_ai.client.token.usage``, observed with the SDK's in-memory
exporter and reader, for events a real tracker stored in JetStream."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import budget
from budget import otel
from budget.manager import BudgetManager
from budget.tracker import UsageTracker, start_usage_tracker
from events import Topology, UsageRecorded
from events.codec import decode

from enforcement import stack_settings
from provider_mocks import ProviderApi

pytestmark = pytest.mark.integration


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def token_points(self) -> list[HistogramDataPoint]:
        return self.points("gen_ai.client.token.usage")

    def points(self, histogram: str) -> list[HistogramDataPoint]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == histogram
            for point in metric.data.data_points
            if isinstance(point, HistogramDataPoint)
        ]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    yield Telemetry(spans, reader, tracer_provider)
    otel.disable()
    tracer_provider.shutdown()


@pytest.fixture
async def tracker(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> AsyncIterator[UsageTracker]:
    started = await start_usage_tracker(stack_settings(nats_url, db, topology, tmp_path))
    yield started
    await started.close()


async def stored_events(nc: Client, topology: Topology) -> list[UsageRecorded]:
    js = nc.jetstream()
    info = await js.stream_info(topology.event_stream.name)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(topology.event_stream.name, seq)
        event = decode(message.data or b"")
        if isinstance(event, UsageRecorded):
            found.append(event)
    return found


async def test_each_recorded_call_is_a_genai_span_with_its_exact_cost_and_token_points(
    tracker: UsageTracker, telemetry: Telemetry, nc: Client, topology: Topology
) -> None:
    otel.enable(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=MeterProvider(metric_readers=[telemetry.metrics]),
    )
    priced = await tracker.record_usage(
        model="gpt-4o",
        provider="openai",
        input_tokens=1200,
        cached_tokens=1000,
        output_tokens=300,
        reasoning_tokens=100,
        project_id="p1",
    )
    unpriced = await tracker.record_usage(
        model="no-such-model-xyz", provider="openai", input_tokens=10, output_tokens=5
    )
    await tracker.flush()

    stored = {e.event_id: e for e in await stored_events(nc, topology)}
    assert set(stored) == {priced.event_id, unpriced.event_id}
    spans = {s.attributes["budget.event_id"]: s for s in telemetry.finished() if s.attributes}
    assert set(spans) == {str(priced.event_id), str(unpriced.event_id)}

    span = spans[str(priced.event_id)]
    assert span.name == "chat gpt-4o"
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 100,
        "budget.event_id": str(priced.event_id),
        "budget.cost.usd": str(stored[priced.event_id].cost),
    }
    assert stored[priced.event_id].cost is not None
    assert Decimal(str(span.attributes["budget.cost.usd"])) == stored[priced.event_id].cost

    bare = dict(spans[str(unpriced.event_id)].attributes or {})
    assert "budget.cost.usd" not in bare
    assert bare["budget.cost.unpriced_reason"] == stored[unpriced.event_id].unpriced_reason

    points = {
        (p.attributes["gen_ai.request.model"], p.attributes["gen_ai.token.type"]): p
        for p in telemetry.token_points()
        if p.attributes
    }
    assert {key: (p.count, p.sum) for key, p in points.items()} == {
        ("gpt-4o", "input"): (1, 1200),
        ("gpt-4o", "output"): (1, 300),
        ("no-such-model-xyz", "input"): (1, 10),
        ("no-such-model-xyz", "output"): (1, 5),
    }
    assert dict(points[("gpt-4o", "input")].attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.token.type": "input",
    }


@pytest.mark.parametrize(
    ("provider", "model", "convention"),
    [
        ("Google", "gemini-2.5-flash", "gcp.gen_ai"),
        ("mistral", "mistral-large-latest", "mistral_ai"),
        ("xAI", "grok-3", "x_ai"),
        ("anthropic", "claude-sonnet-4", "anthropic"),
    ],
)
async def test_the_provider_is_named_by_the_conventions_well_known_value(
    tracker: UsageTracker, telemetry: Telemetry, provider: str, model: str, convention: str
) -> None:
    otel.enable(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=MeterProvider(metric_readers=[telemetry.metrics]),
    )
    await tracker.record_usage(model=model, provider=provider, input_tokens=10, output_tokens=2)
    await tracker.flush()

    [span] = telemetry.finished()
    assert span.name == f"chat {model}"
    assert (span.attributes or {})["gen_ai.provider.name"] == convention
    assert {(p.attributes or {})["gen_ai.provider.name"] for p in telemetry.token_points()} == {
        convention
    }


async def test_an_embedding_is_an_input_token_point_alone(
    tracker: UsageTracker, telemetry: Telemetry
) -> None:
    """An embedding has no output: it had been an output point of 0 tokens too, skewing
    the histogram's output distribution toward nothing."""
    otel.enable(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=MeterProvider(metric_readers=[telemetry.metrics]),
    )
    await tracker.record_usage(
        model="text-embedding-3-small", provider="openai", embedding_tokens=8, kind="embedding"
    )
    await tracker.flush()

    [span] = telemetry.finished()
    assert span.name == "embeddings text-embedding-3-small"
    points = telemetry.token_points()
    assert [((p.attributes or {})["gen_ai.token.type"], p.sum) for p in points] == [("input", 8)]


async def test_on_current_span_puts_the_attributes_on_the_callers_span(
    tracker: UsageTracker, telemetry: Telemetry
) -> None:
    otel.enable(tracer_provider=telemetry.tracer_provider, on_current_span=True)
    tracer = telemetry.tracer_provider.get_tracer("host-app")
    with tracer.start_as_current_span("call the model"):
        event = await tracker.record_usage(
            model="gpt-4o", provider="openai", input_tokens=100, output_tokens=20
        )
    await tracker.flush()

    [span] = telemetry.finished()
    assert span.name == "call the model"
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == 100
    assert attributes["budget.event_id"] == str(event.event_id)


@pytest.fixture
async def fail_open_tracker(
    nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> AsyncIterator[UsageTracker]:
    """No enforcer runs: ``fail_open`` lets instrumented calls go ahead."""
    settings = stack_settings(nats_url, db, topology, tmp_path)
    started = await start_usage_tracker(settings.model_copy(update={"fail_open": True}))
    yield started
    await started.close()


def instrumented_openai(
    tracker: UsageTracker, *, sync: bool, api: ProviderApi | None = None, cut_after: int = 0
) -> Any:
    """``cut_after``: each stream's connection drops after that many events (0: never)."""
    import httpx2
    import openai

    api = api or ProviderApi()
    transport = api.cut_transport(events=cut_after) if cut_after else api.transport()
    client = (
        openai.OpenAI(
            api_key="sk-test", max_retries=0, http_client=httpx2.Client(transport=transport)
        )
        if sync
        else openai.AsyncOpenAI(
            api_key="sk-test", max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
        )
    )
    return budget.instrument(client, tracker=tracker, user_id="alice")


HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_an_instrumented_call_is_a_span_on_the_callers_span_too(
    telemetry: Telemetry, fail_open_tracker: UsageTracker, sync: bool
) -> None:
    """``budget.instrument`` records without ``record_usage``: its calls are told to the
    observers all the same, in the caller's context (so on its current span)."""
    otel.enable(tracer_provider=telemetry.tracer_provider, on_current_span=True)
    client = instrumented_openai(fail_open_tracker, sync=sync)
    tracer = telemetry.tracer_provider.get_tracer("host-app")

    def sync_call() -> None:
        with tracer.start_as_current_span("call the model"):
            client.chat.completions.create(model="gpt-4o", messages=HELLO)

    if sync:
        await asyncio.to_thread(sync_call)
    else:
        with tracer.start_as_current_span("call the model"):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    await fail_open_tracker.flush()

    [span] = telemetry.finished()
    assert span.name == "call the model"
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.request.model"] == "gpt-4o"
    assert attributes["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert attributes["gen_ai.usage.input_tokens"] == 93 + 1024
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert attributes["gen_ai.usage.output_tokens"] == 46


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_an_instrumented_calls_span_covers_the_call_and_names_the_model_asked_for(
    telemetry: Telemetry, fail_open_tracker: UsageTracker, sync: bool
) -> None:
    """The span starts as the call is made and ends as its stream ends (it had started as
    the usage was recorded, and ended at once), is named for the model the request asked
    for (it had been named, and its ``gen_ai.request.model`` set, for the one that
    answered), and the call is a point of ``gen_ai.client.operation.duration``."""
    otel.enable(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=MeterProvider(metric_readers=[telemetry.metrics]),
    )
    client = instrumented_openai(fail_open_tracker, sync=sync)
    request = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}

    def read_sync() -> tuple[int, int, int]:
        before = time.time_ns()
        stream = iter(client.chat.completions.create(**request))
        next(stream)
        first_chunk = time.time_ns()
        list(stream)
        return before, first_chunk, time.time_ns()

    async def read_async() -> tuple[int, int, int]:
        before = time.time_ns()
        stream = await client.chat.completions.create(**request)
        await anext(aiter(stream))
        first_chunk = time.time_ns()
        _ = [chunk async for chunk in stream]
        return before, first_chunk, time.time_ns()

    before, first_chunk, after = await (asyncio.to_thread(read_sync) if sync else read_async())
    await fail_open_tracker.flush()

    [span] = telemetry.finished()
    assert span.start_time is not None and span.end_time is not None
    assert before <= span.start_time <= first_chunk <= span.end_time <= after
    assert span.name == "chat gpt-4o-mini"
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (
        19,
        10,
    )
    [duration] = telemetry.points("gen_ai.client.operation.duration")
    assert duration.count == 1
    assert duration.sum == (span.end_time - span.start_time) / 1e9
    assert dict(duration.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    }
    assert {(p.attributes or {})["gen_ai.request.model"] for p in telemetry.token_points()} == {
        "gpt-4o-mini"
    }


async def test_a_request_naming_no_model_is_a_span_named_for_its_operation(
    telemetry: Telemetry, fail_open_tracker: UsageTracker
) -> None:
    """A Responses call from a stored prompt names no model: its span is named for the
    operation alone and has no ``gen_ai.request.model`` (not "unknown"); the answer's
    model is its ``gen_ai.response.model``."""
    otel.enable(tracer_provider=telemetry.tracer_provider)
    client = instrumented_openai(fail_open_tracker, sync=False)
    await client.responses.create(prompt={"id": "pmpt_123"}, input="A haiku")
    await fail_open_tracker.flush()

    [span] = telemetry.finished()
    assert span.name == "chat"
    attributes = dict(span.attributes or {})
    assert "gen_ai.request.model" not in attributes
    assert attributes["gen_ai.response.model"] == "o4-mini-2025-04-16"


async def test_text_completions_and_gemini_calls_are_named_by_the_conventions_operations(
    telemetry: Telemetry, fail_open_tracker: UsageTracker
) -> None:
    """The conventions name the OpenAI legacy completions' operation ``text_completion``
    and Gemini's ``generate_content``: both had been ``chat``."""
    import httpx2
    from google import genai
    from google.genai import types

    otel.enable(tracer_provider=telemetry.tracer_provider)
    client = instrumented_openai(fail_open_tracker, sync=False)
    await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello")
    transport = ProviderApi().transport()
    http = types.HttpOptions(httpx_async_client=httpx2.AsyncClient(transport=transport))
    gemini = budget.instrument(
        genai.Client(api_key="k", http_options=http), tracker=fail_open_tracker
    )
    await gemini.aio.models.generate_content(model="gemini-2.5-flash", contents="Fox")
    await fail_open_tracker.flush()

    operations = {
        span.name: (span.attributes or {})["gen_ai.operation.name"] for span in telemetry.finished()
    }
    assert operations == {
        "text_completion gpt-3.5-turbo-instruct": "text_completion",
        "generate_content gemini-2.5-flash": "generate_content",
    }


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_failed_instrumented_call_is_an_error_span_with_its_error_type(
    telemetry: Telemetry, fail_open_tracker: UsageTracker, stream: bool
) -> None:
    """A call the provider answers with an error records nothing: it had left no trace
    at all, so a trace showed only the calls that succeeded. It is a span with status
    ERROR and the conventions' ``error.type`` (the HTTP status), covering the call, and
    a point of ``gen_ai.client.operation.duration`` with that ``error.type``."""
    import openai

    otel.enable(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=MeterProvider(metric_readers=[telemetry.metrics]),
    )
    client = instrumented_openai(fail_open_tracker, sync=False, api=ProviderApi(fail_with=503))
    before = time.time_ns()
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=stream)
    after = time.time_ns()

    [span] = telemetry.finished()
    assert span.name == "chat gpt-4o"
    assert span.status.status_code == StatusCode.ERROR
    assert span.start_time is not None and span.end_time is not None
    assert before <= span.start_time <= span.end_time <= after
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "error.type": "503",
    }
    [duration] = telemetry.points("gen_ai.client.operation.duration")
    assert (duration.attributes or {})["error.type"] == "503"
    assert telemetry.token_points() == []


async def test_a_stream_cut_short_by_an_error_is_an_error_span_with_what_it_received(
    telemetry: Telemetry, fail_open_tracker: UsageTracker
) -> None:
    """A stream whose connection drops mid-way is recorded with what it received (an
    estimate): its span had looked like a call that succeeded. It has status ERROR and
    ``error.type``, and still the usage recorded."""
    import openai

    otel.enable(tracer_provider=telemetry.tracer_provider)
    client = instrumented_openai(fail_open_tracker, sync=False, cut_after=3)
    got = []
    with pytest.raises(openai.APIConnectionError) as raised:
        async for chunk in await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True
        ):
            got.append(chunk)
    await fail_open_tracker.flush()

    assert len(got) == 3
    [span] = telemetry.finished()
    assert span.status.status_code == StatusCode.ERROR
    attributes = dict(span.attributes or {})
    # The SDK's error, or the one it was raised from (httpx2.ReadError), as the SDK closed
    # the response while it propagated.
    error = raised.value
    assert attributes["error.type"] in {type(error).__name__, type(error.__cause__).__name__}
    assert attributes["gen_ai.usage.output_tokens"] == 2  # "Hello!", estimated
    assert "before its usage arrived" in str(attributes["budget.usage.estimated_reason"])


async def test_a_stream_collected_unread_is_a_span_of_its_own(
    telemetry: Telemetry, fail_open_tracker: UsageTracker
) -> None:
    """A stream never read is recorded when the garbage collector takes it: whatever span
    is current then is not the call's, so the call gets a span of its own."""
    otel.enable(tracer_provider=telemetry.tracer_provider, on_current_span=True)
    client = instrumented_openai(fail_open_tracker, sync=False)
    stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    tracer = telemetry.tracer_provider.get_tracer("host-app")
    with tracer.start_as_current_span("unrelated work"):
        del stream
        gc.collect()
    await fail_open_tracker.flush()

    spans = {span.name: dict(span.attributes or {}) for span in telemetry.finished()}
    assert set(spans) == {"unrelated work", "chat gpt-4o"}
    assert spans["unrelated work"] == {}
    assert spans["chat gpt-4o"]["gen_ai.request.model"] == "gpt-4o"


async def test_a_ready_event_the_manager_publishes_is_a_span_too(
    tracker: UsageTracker, telemetry: Telemetry
) -> None:
    otel.enable(tracer_provider=telemetry.tracer_provider)
    event = tracker.usage_event(model="gpt-4o", provider="openai", input_tokens=12)
    await BudgetManager(tracker.settings, tracker).record_usage(event)
    await tracker.flush()

    [span] = telemetry.finished()
    assert dict(span.attributes or {})["budget.event_id"] == str(event.event_id)


async def test_after_disable_nothing_is_emitted(
    tracker: UsageTracker, telemetry: Telemetry
) -> None:
    otel.enable(tracer_provider=telemetry.tracer_provider)
    otel.disable()
    await tracker.record_usage(model="gpt-4o", provider="openai", input_tokens=1)
    positive = telemetry.tracer_provider.get_tracer("t").start_span("after")
    positive.end()
    assert [s.name for s in telemetry.finished()] == ["after"]


def test_importing_budget_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, budget, budget.tracker;"
        " print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
