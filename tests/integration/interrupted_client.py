"""A script whose sync OpenAI client is interrupted (Ctrl-C: SIGINT to its main thread)
while it waits for the answer to its budget check, which the enforcer has reserved for.

Run as ``python interrupted_client.py`` with ``BUDGET_*`` variables saying where NATS is,
under a BLOCK policy (so the check goes to the enforcer, which reserves). The process's
tracker runs on a background thread, as a sync client's does; its check, once answered,
prints ``reserved RESERVATION_ID``, sends the main thread SIGINT and holds the answer
until the main thread has seen the KeyboardInterrupt. The script then prints
``interrupted``, lets the answer through, and exits when its stdin is closed.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from typing import Any

import httpx2
import openai

import budget
from budget.tracker import get_usage_tracker

from provider_mocks import ProviderApi

CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 10,
}


def main() -> None:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="tracker", daemon=True).start()
    tracker = asyncio.run_coroutine_threadsafe(get_usage_tracker(), loop).result()
    check_budget = tracker.check_budget
    interrupted = asyncio.Event()
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    async def answered_late(*args: Any, **kwargs: Any) -> Any:
        result = await check_budget(*args, **kwargs)
        print(f"reserved {result.reservation_id}", flush=True)
        signal.pthread_kill(main_thread, signal.SIGINT)
        await interrupted.wait()  # the answer still on its way when the call ends
        return result

    tracker.check_budget = answered_late  # type: ignore[method-assign]
    http = httpx2.Client(transport=ProviderApi().transport())
    client = openai.OpenAI(api_key="sk-test", http_client=http)
    budget.instrument(client, tracker=tracker)
    try:
        client.chat.completions.create(**CHAT)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    loop.call_soon_threadsafe(interrupted.set)
    sys.stdin.read()


if __name__ == "__main__":
    main()
