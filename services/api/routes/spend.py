"""Spend totals of a calendar period, per scope and key."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from events import BudgetScope
from events.limits import NAME_MAX
from events.queries import QueryTime, SpendQuery, SpendRow
from projections.windows import priced_cost
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.limits import limited_read
from services.api.problems import LIMITED_RESPONSES

__all__ = ["SpendTotal", "router"]

router = APIRouter(
    route_class=ExactJsonRoute,
    tags=["spend"],
    dependencies=[Depends(limited_read)],
    responses=LIMITED_RESPONSES,
)


class SpendTotal(SpendRow):
    cost: Decimal | None = Field(  # type: ignore[assignment]
        description="USD of the priced calls; null when none of the calls had a price"
        " (unpriced_requests counts them), never 0"
    )


@router.get("/spend", summary="Spend totals of the period holding `at` (default now)")
async def spend(
    api: Annotated[ApiServices, Depends(current_services)],
    period: Literal["daily", "weekly", "monthly"] = "monthly",
    scope: BudgetScope | None = None,
    key: Annotated[
        str | None, Query(min_length=1, max_length=NAME_MAX, description="one scope key")
    ] = None,
    at: Annotated[QueryTime | None, Query(description="ISO 8601 with offset")] = None,
) -> list[SpendTotal]:
    rows = await api.database.spend(SpendQuery(period=period, scope=scope, at=at), key=key)
    return [
        SpendTotal(
            **row.model_dump(exclude={"cost"}),
            cost=priced_cost(row.cost, row.requests, row.unpriced_requests),
        )
        for row in rows
    ]
