"""Who else hears of each recorded call: observers the tracker tells after it has priced a
call and before it publishes it (``budget.otel`` is one). Kept free of any optional
dependency so the tracker can import it unconditionally."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from events import UsageRecorded

__all__ = [
    "InstrumentedCall",
    "RecordedObserver",
    "add_observer",
    "notify_recorded",
    "remove_observer",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstrumentedCall:
    """What ``budget.instrument`` knows of a call that its event does not say: the model
    the request named (None when it named none) and the one the answer named (None when
    it named none; the event's ``model`` is the answer's, else the request's), when
    the call began (``time.time_ns()``; it ends as it is recorded), and the GenAI
    conventions' operation, where the event's ``kind`` does not tell it (None)."""

    requested_model: str | None
    response_model: str | None
    started_ns: int
    operation: str | None = None


RecordedObserver = Callable[[UsageRecorded, InstrumentedCall | None], None]
"""Called with each event a tracker records (and, for an instrumented call, what the
instrumentation knows of it; None for a ``record_usage``), in the recording task, or in
the instrumented caller's context; it must not block."""

_observers: list[RecordedObserver] = []


def add_observer(observer: RecordedObserver) -> None:
    if observer not in _observers:
        _observers.append(observer)


def remove_observer(observer: RecordedObserver) -> None:
    if observer in _observers:
        _observers.remove(observer)


def notify_recorded(event: UsageRecorded, call: InstrumentedCall | None = None) -> None:
    """Tell every observer; one that fails is logged, never allowed to lose the record
    (the provider has been paid by now)."""
    for observer in tuple(_observers):
        try:
            observer(event, call)
        except Exception:
            log.exception(
                "an observer of recorded usage failed (%r); the usage is recorded", observer
            )
