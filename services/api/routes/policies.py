"""Budget policies: list, get, create, replace, delete. Changes publish ``PolicySet`` /
``PolicyDeleted`` and answer once the policies projection has applied them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from budget.policies import PolicyFieldError, settable_policy, with_configured_defaults
from events import BudgetPolicy, BudgetScope
from services.api.auth import ADMIN, Principal, require
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.limits import limited_read
from services.api.path_ids import with_path_id
from services.api.problems import LIMITED_RESPONSES, Problem

__all__ = ["router"]

router = APIRouter(route_class=ExactJsonRoute, prefix="/policies", tags=["policies"])
Api = Annotated[ApiServices, Depends(current_services)]
Admin = Annotated[Principal, Depends(require(*ADMIN))]


@router.get(
    "", dependencies=[Depends(limited_read)], responses=LIMITED_RESPONSES, summary="Every policy"
)
async def list_policies(api: Api, scope: BudgetScope | None = None) -> list[BudgetPolicy]:
    return await api.database.policies(scope)


@router.get(
    "/{policy_id}",
    dependencies=[Depends(limited_read)],
    responses=LIMITED_RESPONSES,
    summary="One policy",
)
async def get_policy(api: Api, policy_id: str) -> BudgetPolicy:
    return await _existing(api, policy_id)


_DEFAULTS = (
    "Without `action` or `soft_limit_percent` the policy takes the configured"
    " `budget.default_action` and `budget.soft_limit_percent` (warn and 80 unless"
    " configured), as `budget policy set` and the console's form do."
)


@router.post(
    "", status_code=201, summary="Create a policy (409 if its id exists)", description=_DEFAULTS
)
async def create_policy(
    api: Api, who: Admin, policy: BudgetPolicy, response: Response
) -> BudgetPolicy:
    policy = _settable(with_configured_defaults(policy, api.settings))
    if not await api.manager.create_policy(policy, set_by=who.name):
        raise Problem(409, f"policy {policy.policy_id!r} exists; PUT replaces it")
    response.headers["Location"] = f"/api/v1/policies/{policy.policy_id}"
    return policy


@router.put(
    "/{policy_id}", summary="Create or replace the policy with this id", description=_DEFAULTS
)
async def replace_policy(
    api: Api, who: Admin, policy_id: str, policy: BudgetPolicy
) -> BudgetPolicy:
    policy = with_configured_defaults(policy, api.settings)
    policy = _settable(with_path_id(policy, "policy_id", policy_id))
    return await api.manager.set_policy(policy, set_by=who.name)


@router.delete("/{policy_id}", status_code=204, summary="Delete a policy")
async def delete_policy(api: Api, who: Admin, policy_id: str) -> Response:
    if not await api.manager.delete_policy(policy_id, deleted_by=who.name):
        raise Problem(404, f"there is no policy {policy_id!r}")
    return Response(status_code=204)


def _settable(policy: BudgetPolicy) -> BudgetPolicy:
    """The policy as it is set, or a 422 naming the field that keeps it from being set."""
    try:
        return settable_policy(policy)
    except PolicyFieldError as exc:
        field = f"body.{exc.field}"
        errors = [{"field": field, "message": exc.message}]
        raise Problem(422, f"{field}: {exc.message}", errors=errors) from None


async def _existing(api: ApiServices, policy_id: str) -> BudgetPolicy:
    policy = await api.manager.get_policy(policy_id)
    if policy is None:
        raise Problem(404, f"there is no policy {policy_id!r}")
    return policy
