"""What a consumer makes of each delivery as it arrives: the validated event, or the
reason it goes to the dead letters."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from events import EVENT_TYPES, DecodeError, Event, TimeBounds, Topology, UsageRecorded, decode
from projections.engine.fast_codec import FastEvent, decode_fast
from projections.engine.projection import Applied

__all__ = ["Prepared", "Preparer"]

Prepared = Applied | str
"""A delivery decoded into an event, or the reason it is dead-lettered."""


class Preparer:
    """Decodes a message and checks what the decoder cannot: that the event was published
    on its own type's subject (or, for a type published by publisher, on a publisher's
    own: ``Event.BY_PUBLISHER``, whose publisher it records), and that its time is within
    bounds of when it was stored.

    Usage events of the current versions take the fast decoder; whatever it declines
    (other types, older versions, lax forms, invalid events) goes to ``events.decode``,
    which accepts it or gives the reason for the dead letter.

    ``defer_usage``: what arrives on the ``UsageRecorded`` subjects is not decoded until
    asked (``Applied.deferred``), for a consumer that reads the usage ledger's rows."""

    def __init__(
        self, topology: Topology, time_bounds: TimeBounds, *, defer_usage: bool = False
    ) -> None:
        self._topology = topology
        self._subjects: dict[type[Event], str] = {
            model: topology.event_subject(model.SUBJECT) for model in EVENT_TYPES.values()
        }
        self._time_bounds = time_bounds
        usage = self._subjects[UsageRecorded]
        self._deferred = (usage, f"{usage}.") if defer_usage else None

    def __call__(self, stream_seq: int, subject: str, stored_ns: int, data: bytes) -> Prepared:
        if self._deferred is not None and (
            subject == self._deferred[0] or subject.startswith(self._deferred[1])
        ):
            stored_at = datetime.fromtimestamp(stored_ns / 1e9, UTC)
            decode = functools.partial(self.decode, stream_seq, subject, stored_ns, data)
            return Applied.deferred(stream_seq, UsageRecorded, stored_at, decode)
        return self.decode(stream_seq, subject, stored_ns, data)

    def decode(self, stream_seq: int, subject: str, stored_ns: int, data: bytes) -> Prepared:
        """The message decoded and checked, or why it goes to the dead letters."""
        fast = decode_fast(data)
        event: Event | FastEvent
        if fast is not None:
            event, event_type = fast, fast.MODEL
        else:
            try:
                event = decode(data)
            except DecodeError as exc:
                return exc.reason
            event_type = type(event)
        belongs, publisher = self._publisher(event_type, subject)
        if not belongs:
            expected = self._subjects[event_type]
            if event_type.BY_PUBLISHER:
                expected += f" or {expected}.<publisher>"
            return f"type: {event_type.__name__} belongs on {expected}, not on {subject}"
        applied = (
            Applied.of(stream_seq, event, publisher=publisher)
            if isinstance(event, Event)
            else Applied.of_fast(stream_seq, event, publisher=publisher)
        )
        stored_at = datetime.fromtimestamp(stored_ns / 1e9, UTC)
        violation = self._time_bounds.violation(event_type, applied.occurred_at, stored_at)
        if violation is not None:
            return violation
        return applied

    def _publisher(self, event_type: type[Event], subject: str) -> tuple[bool, str | None]:
        """Whether an ``event_type`` belongs on ``subject``, and who published it there
        (None on its bare subject)."""
        if subject == self._subjects[event_type]:
            return True, None
        if not event_type.BY_PUBLISHER:
            return False, None
        publisher = self._topology.publisher_of(event_type.SUBJECT, subject)
        return publisher is not None, publisher
