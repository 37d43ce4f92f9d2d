"""One guarded way to answer a request/reply message, for every service that answers them.

Whatever a request makes its handler raise (a payload that is not the model, a value the
database refuses, a bug it hits), the asker gets an ``RpcError`` at once and the failure is
logged; the subscription, and the service, go on. No single request can stop a service.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import psycopg
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from budget.one_line import one_line
from budget.redaction import redact
from events.rpc import RpcError
from projections.readable import Rebuilding
from services.liveness import Liveness

__all__ = [
    "INBOX",
    "UNAVAILABLE",
    "Answered",
    "Handler",
    "answer",
    "answerable",
    "error_reply",
    "guarded",
    "send",
]

log = logging.getLogger(__name__)

Handler = Callable[[Any, Msg], Awaitable[BaseModel | None]]
"""``handler(request, msg)``: the answer, or None when the handler answers later itself."""

Answered = Literal["handled", "invalid", "failed"]
"""How ``answer`` dealt with a request: its handler ran; the payload was not the model
(answered with what is wrong); or the service was not healthy or the handler raised
(answered with the error)."""

UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, OSError)
"""Failures of the database connection, not of the request: every request would fail."""
_MAX_ERROR = 500  # characters of a failure's text an asker is told


def error_reply(service: str, exc: BaseException) -> RpcError:
    """What the asker is told when answering failed with ``exc``."""
    if isinstance(exc, UNAVAILABLE):
        said = one_line(str(exc))  # libpq's runs to several lines: one log line
        log.warning("%s cannot use PostgreSQL: %s", service, said)
        # The asker (a host app) is told the kind, not libpq's text: it names the
        # database's address, port, socket and role. The API tells its clients no more
        # (services.api.problems.outage_problem).
        return RpcError(
            error=f"{service}: database unavailable ({type(exc).__name__}); its log says why",
            unavailable=True,
        )
    if isinstance(exc, psycopg.DataError):
        return _told(f"{service}: the database refused the request: {exc}")
    if isinstance(exc, Rebuilding):  # after an upgrade: says until when, and how to follow it
        return _told(f"{service}: {exc}")
    if isinstance(exc, ValueError):  # the request was wrong: the handler says how
        return _told(str(exc))
    log.error("%s failed on a request", service, exc_info=exc)
    return RpcError(error=f"{service}: internal error: {type(exc).__name__}")


def _told(text: str, *, unavailable: bool = False) -> RpcError:
    """An answer carrying ``text``, which quotes an exception: redacted, as every text a
    process shows is (the log's redaction never sees it: it is published to the asker, a
    host app, not logged), and bounded."""
    return RpcError(error=redact(text)[:_MAX_ERROR], unavailable=unavailable)


INBOX = "_INBOX."
REMAPPED = "_R_."


def answerable(reply: str) -> bool:
    """Whether an answer may go to ``reply``: an inbox only (``_INBOX.``, or ``_R_.``, where
    NATS remaps the replies of another account's requests). The services' credential may
    publish on the event, alert and JetStream API subjects, so answering a request that
    names one of those as its reply subject would write there on the asker's behalf."""
    return reply.startswith(INBOX) or reply.startswith(REMAPPED)


async def send(nc: Client, reply: str, answer: BaseModel) -> None:
    """Publish ``answer`` to ``reply`` if it is an inbox (nothing if the sender expects no
    answer; ``LimitedRequests`` drops a request naming another subject before this)."""
    if answerable(reply):
        await nc.publish(reply, answer.model_dump_json().encode())


async def answer(
    nc: Client,
    msg: Msg,
    model: type[BaseModel],
    handler: Handler,
    *,
    service: str,
    liveness: Liveness | None = None,
) -> Answered:
    """Parse ``msg`` as ``model``, run ``handler`` and send its answer; on any failure
    send an ``RpcError`` instead. A service whose loops are not healthy says so rather than
    taking a request it cannot decide."""
    answered: Answered
    reply: BaseModel | None
    try:
        problems = liveness.problems(why=False) if liveness is not None else []
        if problems:
            answered = "failed"
            reply = _told(f"{service}: not healthy: {'; '.join(problems)}", unavailable=True)
        else:
            try:
                request = _parse(model, msg.data)
            except ValueError as exc:
                answered, reply = "invalid", error_reply(service, exc)
            else:
                answered, reply = "handled", await handler(request, msg)
    except Exception as exc:
        answered, reply = "failed", error_reply(service, exc)
    if reply is not None:
        await _send_reply(nc, msg, reply, service)
    return answered


async def _send_reply(nc: Client, msg: Msg, reply: BaseModel, service: str) -> None:
    try:
        await send(nc, msg.reply, reply)
    except Exception as exc:  # e.g. an answer too big for NATS: say so, smaller
        log.warning("%s could not send its answer: %s", service, exc)
        refusal = _told(f"{service}: answer not sent: {exc}")
        with contextlib.suppress(Exception):  # not even that: the asker times out
            await send(nc, msg.reply, refusal)


def _parse(model: type[BaseModel], data: bytes) -> BaseModel:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(
            f"bad {model.__name__}: {where + ': ' if where else ''}{first['msg']}"
        ) from None


def guarded(
    nc: Client,
    model: type[BaseModel],
    handler: Handler,
    *,
    service: str,
    liveness: Liveness | None = None,
) -> Callable[[Msg], Awaitable[None]]:
    """A subscription callback answering each message with ``answer``."""

    async def on_message(msg: Msg) -> None:
        await answer(nc, msg, model, handler, service=service, liveness=liveness)

    return on_message
