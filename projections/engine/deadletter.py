"""Malformed messages go to a dead-letter subject with the reason and their original bytes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from events import Topology
from projections.engine.metrics import DEAD_LETTERS, reason_kind
from projections.engine.reader import Delivery

__all__ = [
    "HEADER_ORIGINAL_SEQ",
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


async def dead_letter(
    js: JetStreamContext,
    topology: Topology,
    consumer: str,
    delivery: Delivery[Any],
    reason: str,
) -> None:
    """Publish and wait for the PubAck, so the letter is stored before the checkpoint moves
    past the message. The message id makes a repeat (after a crash) a no-op."""
    one_line = _header_safe(" ".join(reason.split()))[:2000]
    log.warning(
        "dead-lettered %s seq %d (%s): %s",
        delivery.subject,
        delivery.stream_seq,
        consumer,
        one_line,
    )
    await js.publish(
        topology.dead_letter_subject(consumer),
        delivery.data,
        headers={
            "Nats-Msg-Id": f"{consumer}:{delivery.stream_seq}",
            HEADER_REASON: one_line,
            HEADER_ORIGINAL_SUBJECT: delivery.subject,
            HEADER_ORIGINAL_SEQ: str(delivery.stream_seq),
        },
    )
    DEAD_LETTERS.labels(consumer, reason_kind(reason)).inc()


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
