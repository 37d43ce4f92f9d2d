"""The event log on JetStream: declaring the streams (one owner) and binding consumers."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from events import StreamSpec, Topology

__all__ = [
    "LogError",
    "LogMark",
    "bind_consumer",
    "declare_streams",
    "message_digest",
    "require_stream",
    "verify_log",
]

log = logging.getLogger(__name__)


class LogError(RuntimeError):
    """The log is not as this process expects; the message says how to fix it."""


async def declare_streams(js: JetStreamContext, topology: Topology) -> None:
    """Create the event and dead-letter streams if missing. Only the owner calls this
    (``budget migrate``, ``budget up``); an existing stream is checked, not reconfigured
    (an operator may have tuned it), except that direct gets are switched on."""
    for spec in (topology.event_stream, topology.dead_letter_stream):
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(_stream_config(spec))
            continue
        if set(info.config.subjects or ()) != set(spec.subjects):
            raise LogError(
                f"stream {spec.name} exists with subjects {info.config.subjects}, "
                f"expected {list(spec.subjects)}; use another subject prefix or fix the stream"
            )
        if not info.config.allow_direct:
            # Streams made before issue 13: trackers read the policy log's end by direct
            # get, the one read a host credential may do. Nothing else changes.
            info.config.allow_direct = True
            await js.update_stream(info.config)


async def require_stream(js: JetStreamContext, spec: StreamSpec) -> None:
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        raise LogError(
            f"stream {spec.name} does not exist; run `budget migrate` (or `budget up`) first"
        ) from None


def _stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=0,
        duplicate_window=spec.duplicate_window_seconds,
        deny_delete=spec.deny_delete,
        deny_purge=spec.deny_purge,
        allow_direct=True,
    )


def message_digest(data: bytes) -> bytes:
    """What a checkpoint keeps of the message it stands on, to know the log again."""
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(frozen=True)
class LogMark:
    """Where a projection version stands in the log: the stream sequence it has applied
    the log through, and the ``message_digest`` of the message there (None until its
    first batch: a version made before checkpoints kept one, or one that has read
    nothing)."""

    stream_seq: int
    digest: bytes | None


async def verify_log(
    js: JetStreamContext, stream: str, durable: str, marks: Sequence[LogMark], *, rebuild: str
) -> None:
    """``LogError`` unless ``stream`` is the log the checkpoints at ``marks`` were made on:
    it reaches each of them, and holds at each the message its digest was made of.
    Otherwise reading on from a checkpoint would skip every event up to it, with no error
    anywhere (the log recreated, lost, or left in another NATS account). ``rebuild``: the
    command that rebuilds the projections from this log instead, for the message."""
    ends = (await js.stream_info(stream)).state.last_seq
    furthest = max((m.stream_seq for m in marks), default=0)
    if furthest > ends:
        raise _not_its_log(
            durable,
            f"its checkpoint is at stream sequence {furthest}, but stream {stream} ends at {ends}",
            rebuild,
        )
    known = sorted({(m.stream_seq, m.digest) for m in marks if m.stream_seq and m.digest})
    for seq, digest in known:
        try:
            found = (await js.get_msg(stream, seq)).data or b""
        except NotFoundError:
            log.warning(
                "%s: stream %s no longer holds message %d, where a checkpoint stands (a"
                " retention limit?): the log cannot be verified there; reading on",
                durable,
                stream,
                seq,
            )
            continue
        if message_digest(found) != digest:
            raise _not_its_log(
                durable,
                f"the message at its checkpoint (stream sequence {seq} of {stream}) is not"
                " the one it applied there",
                rebuild,
            )


async def bind_consumer(
    js: JetStreamContext,
    stream: str,
    durable: str,
    *,
    filter_subjects: list[str],
    after_seq: int,
    max_ack_pending: int,
) -> ConsumerInfo:
    """(Re)create the durable pull consumer of one projection version, starting right
    after the checkpoint.

    The checkpoint in PostgreSQL is the truth and the consumer only a cursor: an old
    consumer may hold messages that were delivered to a dead worker and not acked, and
    would hand them out again only after newer ones, behind the checkpoint, where they
    would be skipped for good. One worker at a time owns a version (an advisory lock), so
    recreating its consumer at each start is safe (``verify_log`` first: the log must be
    the one the checkpoint was made on).
    """
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(stream, durable)
    created: ConsumerInfo = await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after_seq + 1,
            # One ack covers a whole committed batch (only one worker reads each durable).
            ack_policy=AckPolicy.ALL,
            ack_wait=300,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
            filter_subjects=filter_subjects,
        ),
    )
    return created


def _not_its_log(durable: str, finding: str, rebuild: str) -> LogError:
    return LogError(
        f"{durable}: {finding}: this is not the log it was built from (recreated, lost, or"
        f" left in another NATS account); restore that log, or rebuild from this one"
        f" ({rebuild})"
    )


async def pending_after(
    js: JetStreamContext, stream: str, filter_subjects: list[str], after_seq: int
) -> int:
    """How many messages on ``filter_subjects`` follow ``after_seq``, counted by the server
    through a short-lived consumer (for a projection whose worker has not run yet)."""
    info: ConsumerInfo = await js.add_consumer(
        stream,
        ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after_seq + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=5,
            filter_subjects=filter_subjects,
        ),
    )
    try:
        return int(info.num_pending or 0)
    finally:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, info.name)
