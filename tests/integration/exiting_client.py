"""A script whose instrumented OpenAI client records its calls with the process's tracker
and exits without closing it, as scripts do.

Run as ``python exiting_client.py sync|async CALLS`` with ``BUDGET_*`` variables saying
where NATS and the spool are. Makes ``CALLS`` chat calls (answered by ``ProviderApi``:
nothing reaches the network) with a sync client (the tracker on its background thread)
or an async one (the tracker on ``asyncio.run``'s loop, which has ended when the process
exits), prints ``made CALLS calls`` and returns. ``budget.tracker`` logs at DEBUG on
stderr: its exit hook says when it closes the tracker.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import httpx2
import openai

import budget

from provider_mocks import ProviderApi

CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 10,
}


def sync_calls(count: int) -> None:
    http = httpx2.Client(transport=ProviderApi().transport())
    client = budget.instrument(openai.OpenAI(api_key="sk-test", http_client=http))
    for _ in range(count):
        client.chat.completions.create(**CHAT)


async def async_calls(count: int) -> None:
    http = httpx2.AsyncClient(transport=ProviderApi().transport())
    client = budget.instrument(openai.AsyncOpenAI(api_key="sk-test", http_client=http))
    for _ in range(count):
        await client.chat.completions.create(**CHAT)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    logging.getLogger("budget.tracker").setLevel(logging.DEBUG)
    kind, calls = sys.argv[1], int(sys.argv[2])
    if kind == "sync":
        sync_calls(calls)
    else:
        asyncio.run(async_calls(calls))
    print(f"made {calls} calls", flush=True)
