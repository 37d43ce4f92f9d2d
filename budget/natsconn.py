"""Connecting to NATS with a bounded first attempt.

nats-py retries a failed first connect for as long as reconnects are allowed, and its
default error callback prints a traceback for every attempt: a command pointed at the
wrong URL would hang for minutes, shouting. Bound it and keep the errors in the log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
from nats.aio.client import Client

__all__ = ["connect_nats"]

log = logging.getLogger(__name__)


async def _log_error(exc: Exception) -> None:
    log.debug("NATS client error: %s", exc)


async def connect_nats(url: str, *, within: float, **options: Any) -> Client:
    """Connect within ``within`` seconds or raise ``TimeoutError`` (or the connect error).
    ``options`` go to ``nats.connect``; reconnects after the first success follow them."""
    options.setdefault("error_cb", _log_error)
    async with asyncio.timeout(within):
        client: Client = await nats.connect(url, connect_timeout=within, **options)
        return client
