"""Spend totals of a calendar period, per scope and key."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from events import BudgetScope
from events.queries import QueryTime, SpendQuery, SpendRow
from services.api.context import ApiServices, current_services
from services.api.limits import limited_read
from services.api.problems import LIMITED_RESPONSES

__all__ = ["router"]

router = APIRouter(
    tags=["spend"], dependencies=[Depends(limited_read)], responses=LIMITED_RESPONSES
)


@router.get("/spend", summary="Spend totals of the period holding `at` (default now)")
async def spend(
    api: Annotated[ApiServices, Depends(current_services)],
    period: Literal["daily", "weekly", "monthly"] = "monthly",
    scope: BudgetScope | None = None,
    key: Annotated[str | None, Query(max_length=200, description="one scope key")] = None,
    at: Annotated[QueryTime | None, Query(description="ISO 8601 with offset")] = None,
) -> list[SpendRow]:
    return await api.database.spend(SpendQuery(period=period, scope=scope, at=at), key=key)
