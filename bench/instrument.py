"""Benchmark: the CPU ``budget.instrument`` adds to a provider SDK call, side by side with
the bare call, both against the same mock transport (the SDK's own request building and
response parsing run; no network), on the embedded stack under a WARN policy (the local
check path, no BLOCK policy).

CPU is that of the measuring process, apart from the stack's (every thread: a sync
client's check may run on the tracker's loop in another thread, and the events'
publishing and acks count too), per call, in rounds that alternate bare and
instrumented. Figures (one JSON line each), per case:
``<case>_bare_cpu_us``, ``<case>_instrumented_cpu_us``, ``<case>_added_cpu_us`` (medians
over the rounds, with their ranges). Cases: OpenAI chat async and sync, OpenAI chat
streamed (async), Anthropic messages (async), Gemini content (async).

Run: ``./run python bench/instrument.py [--calls 2000] [--rounds 7] [--cases NAME ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
from google import genai
from google.genai import types
from stack import embedded_stack

import budget
from budget.config import Settings
from budget.manager import BudgetManager
from budget.tracker import UsageTracker, start_usage_tracker
from events import BudgetPolicy, LimitAction

FIXTURES = Path(__file__).parent.parent / "tests" / "integration" / "provider_fixtures"
HELLO = [{"role": "user", "content": "Say hello"}]


def answer(request: httpx2.Request) -> httpx2.Response:
    path = request.url.path
    if path == "/v1/chat/completions":
        if b'"stream":true' in request.content:
            return httpx2.Response(
                200,
                content=BODIES["openai_chat_stream_usage.sse"],
                headers={"content-type": "text/event-stream"},
            )
        name = "openai_chat.json"
    elif path == "/v1/messages":
        name = "anthropic_message.json"
    else:
        name = "gemini_generate.json"
    return httpx2.Response(200, content=BODIES[name], headers={"content-type": "application/json"})


BODIES = {path.name: path.read_bytes() for path in FIXTURES.iterdir()}
Case = Callable[[Any], Awaitable[Any]]


def openai_clients() -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    transport = httpx2.MockTransport(answer)
    sync = openai.OpenAI(api_key="sk-bench", http_client=httpx2.Client(transport=transport))
    async_client = openai.AsyncOpenAI(
        api_key="sk-bench", http_client=httpx2.AsyncClient(transport=transport)
    )
    return sync, async_client


def anthropic_client() -> anthropic.AsyncAnthropic:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    return anthropic.AsyncAnthropic(api_key="bench", http_client=http)


def gemini_client() -> genai.Client:
    transport = httpx2.MockTransport(answer)
    options = types.HttpOptions(
        httpx_client=httpx2.Client(transport=transport),
        httpx_async_client=httpx2.AsyncClient(transport=transport),
    )
    return genai.Client(api_key="bench", http_options=options)


async def openai_chat(client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=100)  # type: ignore[arg-type]


async def openai_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)  # type: ignore[arg-type]
    async for _ in stream:
        pass


async def anthropic_message(client: anthropic.AsyncAnthropic) -> None:
    await client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=HELLO)  # type: ignore[arg-type]


async def gemini_content(client: genai.Client) -> None:
    await client.aio.models.generate_content(model="gemini-2.5-flash", contents="AI?")


def sync_calls(client: openai.OpenAI, calls: int) -> None:
    for _ in range(calls):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=100)  # type: ignore[arg-type]


async def cpu_per_call(run: Callable[[int], Awaitable[None]], calls: int) -> float:
    start = time.process_time_ns()
    await run(calls)
    return (time.process_time_ns() - start) / calls / 1000


def emit(figure: str, samples: list[float], **extra: object) -> None:
    line = {
        "figure": figure,
        "value": round(statistics.median(samples), 1),
        "unit": "us",
        "range": [round(min(samples), 1), round(max(samples), 1)],
        **extra,
    }
    print(json.dumps(line), flush=True)


async def side_by_side(
    name: str,
    bare: Callable[[int], Awaitable[None]],
    instrumented: Callable[[int], Awaitable[None]],
    args: argparse.Namespace,
) -> None:
    await bare(args.calls // 10)  # warm both up: imports, caches, the first snapshot
    await instrumented(args.calls // 10)
    bare_cpu, instrumented_cpu = [], []
    for _ in range(args.rounds):
        bare_cpu.append(await cpu_per_call(bare, args.calls))
        instrumented_cpu.append(await cpu_per_call(instrumented, args.calls))
    added = [i - b for b, i in zip(bare_cpu, instrumented_cpu, strict=True)]
    extra = {"calls": args.calls, "rounds": args.rounds}
    emit(f"{name}_bare_cpu_us", bare_cpu, **extra)
    emit(f"{name}_instrumented_cpu_us", instrumented_cpu, **extra)
    emit(f"{name}_added_cpu_us", added, **extra)


def repeated(case: Case, client: Any) -> Callable[[int], Awaitable[None]]:
    async def run(calls: int) -> None:
        for _ in range(calls):
            await case(client)

    return run


def in_thread(client: openai.OpenAI) -> Callable[[int], Awaitable[None]]:
    async def run(calls: int) -> None:
        await asyncio.to_thread(sync_calls, client, calls)

    return run


ASYNC_CASES: dict[str, tuple[Case, Callable[[], Any]]] = {
    "openai_chat_async": (openai_chat, lambda: openai_clients()[1]),
    "openai_chat_stream_async": (openai_stream, lambda: openai_clients()[1]),
    "anthropic_messages_async": (anthropic_message, anthropic_client),
    "gemini_content_async": (gemini_content, gemini_client),
}
CASES = [*ASYNC_CASES, "openai_chat_sync"]


async def cases(tracker: UsageTracker, args: argparse.Namespace) -> None:
    for name in args.cases:
        if name in ASYNC_CASES:
            case, make = ASYNC_CASES[name]
            instrumented = budget.instrument(make(), tracker=tracker, user_id="bench")
            bare, measured = repeated(case, make()), repeated(case, instrumented)
        else:
            bare = in_thread(openai_clients()[0])
            client = budget.instrument(openai_clients()[0], tracker=tracker, user_id="bench")
            measured = in_thread(client)
        await side_by_side(name, bare, measured, args)
        await tracker.flush()


async def measure(args: argparse.Namespace) -> None:
    """The measuring process: its own tracker, on the stack the parent runs."""
    tracker = await start_usage_tracker(Settings.model_validate_json(args.settings))
    result = await tracker.check_budget("gpt-4o", 100, "bench")
    assert result.allowed and not result.enforced, "the bench needs the local check path"
    await cases(tracker, args)
    await tracker.close()


async def main(args: argparse.Namespace) -> None:
    """Runs the stack, then the measurements in a process of their own: the stack's
    supervisor (which relays its services' output) must not count as the calls' CPU."""
    async with embedded_stack("instrument", default_limit=None) as (_, settings):
        tracker = await start_usage_tracker(settings)
        manager = BudgetManager(settings, tracker, apply_timeout=60)
        await manager.set_policy(
            BudgetPolicy(name="bench warn", limit_amount=Decimal(10**6), action=LimitAction.WARN)
        )
        await tracker.close()
        await asyncio.sleep(args.settle)  # let the services' start-up CPU pass
        command = [
            sys.executable,
            __file__,
            "--measure",
            settings.model_dump_json(),
            "--calls",
            str(args.calls),
            "--rounds",
            str(args.rounds),
            "--cases",
            *args.cases,
        ]
        child = await asyncio.create_subprocess_exec(*command)
        assert await child.wait() == 0, "the measuring process failed"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2_000, help="calls per round and side")
    parser.add_argument("--rounds", type=int, default=7, help="rounds, alternating the sides")
    parser.add_argument("--settle", type=float, default=10, help="seconds to let the stack idle")
    parser.add_argument(
        "--cases", nargs="+", choices=CASES, default=CASES, help="which cases (default: all)"
    )
    parser.add_argument("--measure", dest="settings", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    asyncio.run(measure(parsed) if parsed.settings else main(parsed))
