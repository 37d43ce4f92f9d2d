"""The engine's Prometheus metrics: what a projection worker applies, how long its batches
take, how far behind the log it is, and what it dead-letters (docs/operations.md, Metrics).

They live in the process's default registry; ``budget worker`` serves it when
``metrics_port`` is set (``services.metrics``). Counting costs a few hundred nanoseconds
per batch, not per event."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_SECONDS",
    "DEAD_LETTERS",
    "EVENTS_APPLIED",
    "LAG",
    "PROJECTION_LABELS",
    "REASON_KINDS",
    "from_zero",
    "reason_kind",
]

# Labelled by projection (its own name: spend, history, reports...) and worker (what
# ``budget worker NAME`` runs: a group such as usage, or the projection alone). A group's
# members share one consumer and one transaction per batch: each is given that batch's
# time and the consumer's lag.
PROJECTION_LABELS = ["projection", "worker"]
EVENTS_APPLIED = Counter(
    "budget_projection_events_applied",
    "Events a projection applied (committed with its checkpoint)",
    PROJECTION_LABELS,
)
BATCH_SECONDS = Histogram(
    "budget_projection_batch_seconds",
    "Seconds a projection's worker took to apply, commit and ack one batch (a group's"
    " batch is one transaction for all its projections)",
    PROJECTION_LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAG = Gauge(
    "budget_projection_lag_events",
    "Events in the log that a projection's worker has not committed and acked yet",
    PROJECTION_LABELS,
)
DEAD_LETTERS = Counter(
    "budget_dead_letters",
    "Messages a consumer dead-lettered, by kind of reason (the full reason is in the letter)",
    ["consumer", "reason"],
)

REASON_KINDS = (
    "wrong_subject",
    "time_bounds",
    "database_refused",
    "projection_failed",
    "invalid",
)
"""A dead letter's reason is free text that quotes the message; a label takes one of these
instead, so the number of series stays small."""


def reason_kind(reason: str) -> str:
    """Which of ``REASON_KINDS`` a dead letter's reason is. ``invalid``: not a valid event
    (not JSON, an unknown type, a field out of range) or one the projection rejects (e.g.
    a correction of an event it never recorded)."""
    if reason.startswith("type: ") and " belongs on " in reason:
        return "wrong_subject"  # projections.engine.preparer
    if "(max_clock_skew)" in reason or "(max_event_age)" in reason:
        return "time_bounds"  # events.bounds
    if reason.startswith("rejected by the database: "):
        return "database_refused"  # projections.engine.runner
    if reason.startswith("the projection failed on it: "):
        return "projection_failed"  # projections.engine.runner
    return "invalid"


def from_zero(counter: Counter, *labelings: Sequence[str]) -> None:
    """Expose ``counter``'s series of each of ``labelings`` at 0 before it first counts.
    Prometheus sees no increase in a series that first appears at 1 (``increase`` and
    ``rate`` need a sample before the change), so an alert on the first dead letter or
    failed delivery since a process started would never fire."""
    for labels in labelings:
        counter.labels(*labels)
