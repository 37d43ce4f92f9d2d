"""Who else hears of each recorded call: observers the tracker tells after it has priced a
call and before it publishes it (``budget.otel`` is one); and of each instrumented call
that failed, recording nothing. Kept free of any optional dependency so the tracker can
import it unconditionally."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from events import CallKind, UsageRecorded

__all__ = [
    "FailedCall",
    "FailedObserver",
    "InstrumentedCall",
    "RecordedObserver",
    "add_failure_observer",
    "add_observer",
    "notify_failed",
    "notify_recorded",
    "remove_failure_observer",
    "remove_observer",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstrumentedCall:
    """What ``budget.instrument`` knows of a call that its event does not say: the model
    the request named (None when it named none) and the one the answer named (None when
    it named none; the event's ``model`` is the answer's, else the request's), when
    the call began (``time.time_ns()``; it ends as it is recorded), the GenAI
    conventions' operation, where the event's ``kind`` does not tell it (None), and the
    error that ended a stream after it had begun (recorded with what it had received)."""

    requested_model: str | None
    response_model: str | None
    started_ns: int
    operation: str | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class FailedCall:
    """An instrumented call that ended in ``error`` (the provider's, a lost connection, a
    timeout, a cancellation) before it answered: nothing is recorded, its reservation is
    released."""

    provider: str
    kind: CallKind
    call: InstrumentedCall
    error: BaseException


RecordedObserver = Callable[[UsageRecorded, InstrumentedCall | None], None]
"""Called with each event a tracker records (and, for an instrumented call, what the
instrumentation knows of it; None for a ``record_usage``), in the recording task, or in
the instrumented caller's context; it must not block."""

FailedObserver = Callable[[FailedCall], None]
"""Called with each instrumented call that failed, in the caller's context, as its error
propagates; it must not block."""

_observers: list[RecordedObserver] = []
_failure_observers: list[FailedObserver] = []


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


def add_failure_observer(observer: FailedObserver) -> None:
    if observer not in _failure_observers:
        _failure_observers.append(observer)


def remove_failure_observer(observer: FailedObserver) -> None:
    if observer in _failure_observers:
        _failure_observers.remove(observer)


def notify_failed(failed: FailedCall) -> None:
    """Tell every failure observer; one that fails is logged, never allowed to replace
    the call's own error, which the caller must see."""
    for observer in tuple(_failure_observers):
        try:
            observer(failed)
        except Exception:
            log.exception("an observer of failed calls failed (%r)", observer)
