"""The projections this product runs, by name (``budget worker NAME``)."""

from __future__ import annotations

from projections.alerts import AlertsProjection
from projections.api_keys import ApiKeysProjection
from projections.engine.projection import Projection
from projections.history import HistoryProjection
from projections.policies import PoliciesProjection
from projections.reports import ReportsProjection
from projections.spend import SpendProjection

__all__ = ["PROJECTIONS", "get_projection"]

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
