"""Malformed messages go to a dead-letter subject with the reason and their original bytes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from budget.redaction import redact
from events import Topology
from projections.engine.metrics import DEAD_LETTERS, reason_kind
from projections.engine.reader import Delivery

__all__ = [
    "HEADER_ORIGINAL_SEQ",
    "HEADER_ORIGINAL_SIZE",
    "HEADER_ORIGINAL_SUBJECT",
    "HEADER_REASON",
    "DeadLetter",
    "dead_letter",
    "recent_dead_letters",
]

log = logging.getLogger(__name__)

HEADER_REASON = "Budget-Dead-Letter-Reason"
HEADER_ORIGINAL_SUBJECT = "Budget-Original-Subject"
HEADER_ORIGINAL_SEQ = "Budget-Original-Seq"
HEADER_ORIGINAL_SIZE = "Budget-Original-Size"
"""Set on a letter cut to fit NATS's max_payload: the message's size in bytes."""


async def dead_letter(
    js: JetStreamContext,
    topology: Topology,
    consumer: str,
    delivery: Delivery[Any],
    reason: str,
    *,
    max_payload: int,
) -> None:
    """Publish and wait for the PubAck, so the letter is stored before the checkpoint moves
    past the message. The message id makes a repeat (after a crash) a no-op. NATS refuses
    a message whose headers and body together pass ``max_payload`` (it drops the
    connection), so the body of a message near that size is cut to fit: the letter says
    its size (``HEADER_ORIGINAL_SIZE``), and the message stays whole in the event stream
    at ``HEADER_ORIGINAL_SEQ``."""
    # Redacted here: the header is published (the stream keeps it, viewer keys read it),
    # so the log's redaction, which masks the line below, never sees it.
    one_line = _header_safe(" ".join(redact(reason).split()))[:2000]
    headers = {
        "Nats-Msg-Id": f"{consumer}:{delivery.stream_seq}",
        HEADER_REASON: one_line,
        HEADER_ORIGINAL_SUBJECT: delivery.subject,
        HEADER_ORIGINAL_SEQ: str(delivery.stream_seq),
    }
    body = delivery.data
    cut = ""
    if _header_block_size(headers) + len(body) > max_payload:
        headers[HEADER_ORIGINAL_SIZE] = str(len(body))
        body = body[: max_payload - _header_block_size(headers)]
        cut = f" (the letter holds its first {len(body)} of {len(delivery.data)} bytes)"
    log.warning(
        "dead-lettered %s seq %d (%s): %s%s",
        delivery.subject,
        delivery.stream_seq,
        consumer,
        one_line,
        cut,
    )
    await js.publish(topology.dead_letter_subject(consumer), body, headers=headers)
    DEAD_LETTERS.labels(consumer, reason_kind(reason)).inc()


def _header_block_size(headers: dict[str, str]) -> int:
    """The bytes ``headers`` take in a NATS message: a ``NATS/1.0`` line, a ``Key: value``
    line each and a blank line, each ended by CRLF."""
    lines = sum(len(key.encode()) + len(value.encode()) + 4 for key, value in headers.items())
    return len(b"NATS/1.0\r\n\r\n") + lines


def _header_safe(text: str) -> str:
    """Printable ASCII, the rest escaped (``\\x00``, ``\\xe9``): a reason quotes the message,
    and a control character or non-ASCII letter in a NATS header value corrupts it."""
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode() for c in text)


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    """Its sequence in the dead-letter stream."""
    consumer: str
    reason: str
    original_subject: str | None
    original_seq: int | None
    stored_at: datetime | None
    data: str
    """The message as received (invalid UTF-8 replaced), cut at 4,000 characters."""


async def recent_dead_letters(
    js: JetStreamContext, topology: Topology, *, limit: int = 100, before: int | None = None
) -> list[DeadLetter]:
    """The newest ``limit`` dead letters (below sequence ``before``), newest first."""
    stream = topology.dead_letter_stream.name
    state = (await js.stream_info(stream)).state
    seq = min(state.last_seq, (before or state.last_seq + 1) - 1)
    prefix = topology.dead_letter_subject("")
    letters: list[DeadLetter] = []
    while seq >= max(state.first_seq, 1) and len(letters) < limit:
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            seq -= 1
            continue
        headers = msg.headers or {}
        original_seq = headers.get(HEADER_ORIGINAL_SEQ, "")
        letters.append(
            DeadLetter(
                seq=seq,
                consumer=(msg.subject or "").removeprefix(prefix),
                reason=str(headers.get(HEADER_REASON, "")),  # older letters: maybe not ASCII
                original_subject=headers.get(HEADER_ORIGINAL_SUBJECT),
                original_seq=int(original_seq) if original_seq.isdigit() else None,
                stored_at=msg.time,
                data=(msg.data or b"").decode(errors="replace")[:4000],
            )
        )
        seq -= 1
    return letters
