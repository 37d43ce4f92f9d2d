"""API keys (admin): list, create (the key is shown once, in this answer), revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from events import ApiRole
from events.limits import NAME_MAX
from projections.api_keys import ApiKey
from services.api.auth import ADMIN, Principal, require
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.problems import Problem

__all__ = ["CreatedKey", "KeyRequest", "router"]

router = APIRouter(route_class=ExactJsonRoute, prefix="/keys", tags=["API keys"])
Api = Annotated[ApiServices, Depends(current_services)]
Admin = Annotated[Principal, Depends(require(*ADMIN))]


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX)
    role: ApiRole


class CreatedKey(BaseModel):
    key_id: str
    name: str
    role: ApiRole
    created_at: datetime
    key: str = Field(description="shown once: only its hash is kept")
    applied: bool = Field(
        description="false (status 202): stored, but not in force yet; it is once"
        " GET on the Location answers 200"
    )


@router.get("", summary="Every key (revoked ones too), without secrets")
async def list_keys(api: Api, _: Admin) -> list[ApiKey]:
    return await api.keys.keys()


@router.get("/{key_id}", summary="One key, without its secret (404 until it is applied)")
async def get_key(api: Api, _: Admin, key_id: str) -> ApiKey:
    found = await api.keys.keys(key_id)
    if not found:
        raise Problem(404, f"there is no key {key_id!r}")
    return found[0]


@router.post(
    "",
    status_code=201,
    responses={
        202: {
            "model": CreatedKey,
            "description": "Stored, but not in force yet (its worker is behind): keep the"
            " key; it works once GET on the Location answers 200",
        }
    },
    summary="Create a key; the answer is the only copy",
)
async def create_key(api: Api, who: Admin, body: KeyRequest, response: Response) -> CreatedKey:
    issued = await api.keys.create(body.name, body.role, created_by=who.name)
    response.headers["Location"] = f"/api/v1/keys/{issued.key.key_id}"
    response.headers["Cache-Control"] = "no-store"  # the key's only copy: no cache keeps it
    if not issued.applied:
        response.status_code = 202
    return CreatedKey(
        key_id=issued.key.key_id,
        name=issued.event.name,
        role=issued.event.role,
        created_at=issued.event.occurred_at,
        key=issued.key.key,
        applied=issued.applied,
    )


@router.delete("/{key_id}", status_code=204, summary="Revoke a key (refused from now on)")
async def revoke_key(api: Api, who: Admin, key_id: str) -> Response:
    if not await api.keys.revoke(key_id, revoked_by=who.name):
        raise Problem(404, f"there is no live key {key_id!r}")
    api.key_cache.forget()  # this process refuses it now; the others when notified
    return Response(status_code=204)
