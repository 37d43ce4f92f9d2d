"""Malformed messages go to a dead-letter subject with the reason and their original bytes."""

from __future__ import annotations

import logging
from typing import Any

from nats.js import JetStreamContext

from events import Topology
from projections.reader import Delivery

__all__ = ["HEADER_ORIGINAL_SEQ", "HEADER_ORIGINAL_SUBJECT", "HEADER_REASON", "dead_letter"]

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
    one_line = " ".join(reason.split())[:2000]
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
