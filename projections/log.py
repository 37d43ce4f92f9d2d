"""The event log on JetStream: declaring the streams (one owner) and binding consumers."""

from __future__ import annotations

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

__all__ = ["LogError", "bind_consumer", "declare_streams", "require_stream"]


class LogError(RuntimeError):
    """The log is not as this process expects; the message says how to fix it."""


async def declare_streams(js: JetStreamContext, topology: Topology) -> None:
    """Create the event and dead-letter streams if missing. Only the owner calls this
    (``budget migrate``, ``budget up``); an existing stream is checked, never updated,
    so nobody overwrites settings an operator tuned."""
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
    """Bind to (or create) the durable pull consumer of one projection version.

    The checkpoint in PostgreSQL is the truth. A consumer whose ack floor is past it (the
    database was restored from a backup, say) would skip events, so it is recreated to
    start right after the checkpoint; one behind it only redelivers what will be skipped.
    """
    info: ConsumerInfo | None
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        info = None
    if info is not None and info.ack_floor is not None and info.ack_floor.stream_seq > after_seq:
        await js.delete_consumer(stream, durable)
        info = None
    if info is not None:
        return info
    created: ConsumerInfo = await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after_seq + 1,
            # One ack covers a whole committed batch; one worker at a time reads each
            # durable (the engine holds a PostgreSQL advisory lock), so ack-all is safe.
            ack_policy=AckPolicy.ALL,
            ack_wait=60,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
            filter_subjects=filter_subjects,
        ),
    )
    return created
