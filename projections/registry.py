"""The projections this product runs, by name, and the groups that share one consumer
(``budget worker NAME`` takes either)."""

from __future__ import annotations

from projections.alerts import AlertsProjection
from projections.api_keys import ApiKeysProjection
from projections.engine.projection import Projection
from projections.history import HistoryProjection
from projections.policies import PoliciesProjection
from projections.reports import ReportsProjection
from projections.spend import SpendProjection

__all__ = [
    "GROUPS",
    "PROJECTIONS",
    "WORKERS",
    "get_projection",
    "groups_of",
    "worker_projections",
]

PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (
        SpendProjection(),
        HistoryProjection(),
        PoliciesProjection(),
        AlertsProjection(),
        ReportsProjection(),
        ApiKeysProjection(),
    )
}

GROUPS: dict[str, tuple[str, ...]] = {"usage": ("spend", "history", "reports")}
"""Projections that read the same events and share a ledger: one delivery, one decoding
and one transaction per batch. The alert evaluator stays alone, so a slow rollup never
delays an alert."""

WORKERS = ("usage", "policies", "alerts", "api_keys")
"""The projection workers ``budget up`` and compose run: every projection, once."""


def get_projection(name: str) -> Projection:
    try:
        return PROJECTIONS[name]
    except KeyError:
        known = ", ".join(sorted(PROJECTIONS))
        raise ValueError(f"unknown projection {name!r}; choose one of: {known}") from None


def groups_of(projection: str) -> list[str]:
    """The groups ``projection`` is a member of (a worker of any runs it)."""
    return [group for group, members in GROUPS.items() if projection in members]


def worker_projections(name: str) -> list[Projection]:
    """What ``budget worker NAME`` runs: a group's projections, or one projection."""
    if name in GROUPS:
        return [PROJECTIONS[member] for member in GROUPS[name]]
    if name in PROJECTIONS:
        return [PROJECTIONS[name]]
    known = ", ".join([*GROUPS, *sorted(PROJECTIONS)])
    raise ValueError(f"unknown worker {name!r}; choose a group or a projection: {known}")
