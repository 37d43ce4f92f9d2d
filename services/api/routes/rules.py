"""Alert rules: list, add, replace, remove (``AlertRuleSet`` / ``AlertRuleRemoved``,
answered once the alert evaluator has applied them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from events import AlertRule
from services.api.auth import ADMIN, require
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.limits import limited_read
from services.api.path_ids import with_path_id
from services.api.problems import LIMITED_RESPONSES, Problem

__all__ = ["router", "unusable_setting"]

router = APIRouter(route_class=ExactJsonRoute, prefix="/rules", tags=["alert rules"])
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
    await _usable(api, rule)
    if not await api.alerts.create_rule(rule):
        raise Problem(409, f"rule {rule.rule_id!r} exists; PUT replaces it")
    return rule


@router.put("/{rule_id}", dependencies=[Depends(require(*ADMIN))], summary="Add or replace a rule")
async def replace_rule(api: Api, rule_id: str, rule: AlertRule) -> AlertRule:
    rule = with_path_id(rule, "rule_id", rule_id)
    await _usable(api, rule)
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


async def unusable_setting(api: ApiServices, rule: AlertRule) -> str | None:
    """What in ``rule`` would do nothing, as a message starting with the field's name, or
    None: a setting of no use to its type (``unused_setting``), or a policy id no policy
    has (a typo would leave a rule that never fires, and nothing to say so)."""
    if why := rule.unused_setting():
        return why
    known = {p.policy_id for p in await api.database.policies()}
    unknown = [i for i in rule.policy_ids or () if i not in known]
    if not unknown:
        return None
    names = ", ".join(repr(i) for i in unknown)
    return (
        f"policy_ids: no policy has the id {names}, so the rule would never fire for it;"
        " use the ids the policies list shows"
    )


async def _usable(api: ApiServices, rule: AlertRule) -> None:
    """A 422 naming the field of ``rule`` that would do nothing (``unusable_setting``)."""
    if why := await unusable_setting(api, rule):
        field = why.partition(":")[0]
        raise Problem(422, why, errors=[{"field": f"body.{field}", "message": why}])
