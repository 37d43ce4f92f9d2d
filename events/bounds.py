"""The limits on an event's time: ``occurred_at`` against the moment the event was made
(at a producer) or stored in the log (at a consumer).

Consumers judge an event against its own storage time in JetStream, never against the
time they read it: a replay or rebuild years later gives every event the verdict it got
live, so replay still equals live.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from events.envelope import Event

__all__ = ["OutOfBounds", "TimeBounds"]


class OutOfBounds(ValueError):
    """A producer's event is outside the bounds: the message says which and why."""


@dataclass(frozen=True, kw_only=True)
class TimeBounds:
    max_clock_skew: timedelta = timedelta(minutes=5)
    """How far ``occurred_at`` may lie after the reference time (producers' clocks drift)."""
    max_event_age: timedelta = timedelta(days=730)
    """How far ``occurred_at`` may lie before the reference time (spooled re-sends,
    backfills). Events whose ``occurred_at`` repeats an older event's (corrections) are
    exempt."""

    def violation(
        self, event_type: type[Event], occurred_at: datetime, reference: datetime
    ) -> str | None:
        """Why an event of ``event_type`` that occurred at ``occurred_at`` is out of bounds
        at ``reference``, or None when it is not. (Type and time rather than the event, so
        a consumer asks without building the pydantic model.)"""
        return self.time_violation(occurred_at, reference, aged=not event_type.REPEATS_OCCURRED_AT)

    def time_violation(
        self, occurred_at: datetime, reference: datetime, *, aged: bool = True
    ) -> str | None:
        ahead = occurred_at - reference
        if ahead > self.max_clock_skew:
            return (
                f"occurred_at: {occurred_at.isoformat()} is {ahead} after {reference.isoformat()};"
                f" at most {self.max_clock_skew} (max_clock_skew) is allowed: check the"
                " producer's clock"
            )
        if aged and -ahead > self.max_event_age:
            return (
                f"occurred_at: {occurred_at.isoformat()} is {-ahead} before"
                f" {reference.isoformat()}; at most {self.max_event_age} (max_event_age) is"
                " allowed"
            )
        return None
