"""Who else hears of each recorded call: observers the tracker tells after it has priced a
call and before it publishes it (``budget.otel`` is one). Kept free of any optional
dependency so the tracker can import it unconditionally."""

from __future__ import annotations

import logging
from collections.abc import Callable

from events import UsageRecorded

__all__ = ["RecordedObserver", "add_observer", "notify_recorded", "remove_observer"]

log = logging.getLogger(__name__)

RecordedObserver = Callable[[UsageRecorded], None]
"""Called with each event a tracker records, in the recording task; it must not block."""

_observers: list[RecordedObserver] = []


def add_observer(observer: RecordedObserver) -> None:
    if observer not in _observers:
        _observers.append(observer)


def remove_observer(observer: RecordedObserver) -> None:
    if observer in _observers:
        _observers.remove(observer)


def notify_recorded(event: UsageRecorded) -> None:
    """Tell every observer; one that fails is logged, never allowed to lose the record
    (the provider has been paid by now)."""
    for observer in tuple(_observers):
        try:
            observer(event)
        except Exception:
            log.exception(
                "an observer of recorded usage failed (%r); the usage is recorded", observer
            )
