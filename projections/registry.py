"""The projections this product runs, by name (``budget worker NAME``)."""

from __future__ import annotations

from projections.alerts import AlertsProjection
from projections.api_keys import ApiKeysProjection
from projections.engine.projection import Projection
from projections.history import HistoryProjection
from projections.policies import PoliciesProjection
from projections.reports import ReportsProjection
from projections.spend import SpendProjection

__all__ = ["PROJECTIONS", "get_projection", "worker_projections"]

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


def get_projection(name: str) -> Projection:
    try:
        return PROJECTIONS[name]
    except KeyError:
        known = ", ".join(sorted(PROJECTIONS))
        raise ValueError(f"unknown projection {name!r}; choose one of: {known}") from None


def worker_projections(name: str) -> list[Projection]:
    """The projections one ``budget worker NAME`` process runs; ``ValueError`` for a name
    ``budget worker`` does not accept. Tools that watch a worker's progress (the
    benchmarks) ask this rather than assume one projection per worker."""
    return [get_projection(name)]
