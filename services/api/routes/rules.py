"""Alert rules: list, add, replace, remove (``AlertRuleSet`` / ``AlertRuleRemoved``,
answered once the alert evaluator has applied them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from events import AlertRule
from services.api.auth import ADMIN, require
from services.api.context import ApiServices, current_services
from services.api.limits import limited_read
from services.api.path_ids import with_path_id
from services.api.problems import LIMITED_RESPONSES, Problem

__all__ = ["router"]

router = APIRouter(prefix="/rules", tags=["alert rules"])
Api = Annotated[ApiServices, Depends(current_services)]


@router.get(
    "",
    dependencies=[Depends(limited_read)],
    responses=LIMITED_RESPONSES,
    summary="The rules in force",
)
async def list_rules(api: Api) -> list[AlertRule]:
    return await api.database.rules()


@router.post("", status_code=201, dependencies=[Depends(require(*ADMIN))], summary="Add a rule")
async def add_rule(api: Api, rule: AlertRule) -> AlertRule:
    _usable(rule)
    if not await api.alerts.create_rule(rule):
        raise Problem(409, f"rule {rule.rule_id!r} exists; PUT replaces it")
    return rule


@router.put("/{rule_id}", dependencies=[Depends(require(*ADMIN))], summary="Add or replace a rule")
async def replace_rule(api: Api, rule_id: str, rule: AlertRule) -> AlertRule:
    rule = with_path_id(rule, "rule_id", rule_id)
    _usable(rule)
    return await api.alerts.add_rule(rule)


@router.delete(
    "/{rule_id}",
    status_code=204,
    dependencies=[Depends(require(*ADMIN))],
    summary="Remove a rule",
)
async def remove_rule(api: Api, rule_id: str) -> Response:
    if not await api.alerts.remove_rule(rule_id):
        raise Problem(404, f"there is no rule {rule_id!r}")
    return Response(status_code=204)


def _usable(rule: AlertRule) -> None:
    """A 422 naming the field of ``rule`` that would do nothing (``unused_setting``)."""
    if why := rule.unused_setting():
        field = why.partition(":")[0]
        raise Problem(422, why, errors=[{"field": f"body.{field}", "message": why}])
