"""API keys (admin): list, create (the key is shown once, in this answer), revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from events import ApiRole
from projections.api_keys import ApiKey
from services.api.auth import ADMIN, Principal, require
from services.api.context import ApiServices, current_services
from services.api.problems import Problem

__all__ = ["CreatedKey", "KeyRequest", "router"]

router = APIRouter(prefix="/keys", tags=["API keys"])
Api = Annotated[ApiServices, Depends(current_services)]
Admin = Annotated[Principal, Depends(require(*ADMIN))]


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    role: ApiRole


class CreatedKey(BaseModel):
    key_id: str
    name: str
    role: ApiRole
    created_at: datetime
    key: str = Field(description="shown once: only its hash is kept")


@router.get("", summary="Every key (revoked ones too), without secrets")
async def list_keys(api: Api, _: Admin) -> list[ApiKey]:
    return await api.keys.keys()


@router.post("", status_code=201, summary="Create a key; the answer is the only copy")
async def create_key(api: Api, who: Admin, body: KeyRequest) -> CreatedKey:
    made = await api.keys.create(body.name, body.role, created_by=who.name)
    [stored] = await api.keys.keys(made.key_id)
    return CreatedKey(
        key_id=made.key_id,
        name=stored.name,
        role=stored.role,
        created_at=stored.created_at,
        key=made.key,
    )


@router.delete("/{key_id}", status_code=204, summary="Revoke a key (refused from now on)")
async def revoke_key(api: Api, who: Admin, key_id: str) -> Response:
    if not await api.keys.revoke(key_id, revoked_by=who.name):
        raise Problem(404, f"there is no live key {key_id!r}")
    return Response(status_code=204)
