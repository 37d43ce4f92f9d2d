"""A cheaper path for a subscription's messages than nats-py's own.

Even a subscription callback costs ~10 µs per message: nats-py parses every message's
headers (with the email parser), builds a ``Msg``, queues it and wakes a task to await
the callback. A raw handler skips all that: the client's dispatch is hooked so the raw
subject, reply, payload and headers of a subscription's messages go straight to it. For
hot paths that need little of a message: a consumer's deliveries, a publisher's acks.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client

__all__ = ["RawHandler", "raw_handlers"]

RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
"""``handler(subject, reply, payload, headers)``: a message as the protocol parser found it."""


def raw_handlers(nc: Client) -> dict[int, RawHandler]:
    """The client's raw handlers by subscription id (``Subscription._id``), hooking its
    dispatch the first time. Messages of other subscriptions (and every one after a
    handler is removed) take nats-py's own path."""
    handlers: dict[int, RawHandler] | None = getattr(nc, "_budget_raw_handlers", None)
    if handlers is not None:
        return handlers
    found: dict[int, RawHandler] = {}
    original = nc._process_msg

    async def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = found.get(sid)
        if handler is None:
            await original(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        nc.stats["in_msgs"] += 1
        nc.stats["in_bytes"] += len(data)
        try:
            handler(subject, reply, data, headers)
        except Exception as exc:  # as nats-py treats a failing callback: reported, not fatal
            await nc._error_cb(exc)

    setattr(nc, "_process_msg", process_msg)  # noqa: B010 - an instance hook, not a method
    setattr(nc, "_budget_raw_handlers", found)  # noqa: B010
    return found
