"""Are the enforcer and the query service answering? One question each that any caller
may ask and that changes nothing: what the API's /services and ``budget doctor`` report."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client
from pydantic import BaseModel

from budget.config import Settings
from budget.rpc import RpcFailure, Unanswered, ask
from events.queries import QUERY_POSITION, PositionAnswer, PositionQuery
from events.rpc import RPC_SNAPSHOT, CallAttributes, Snapshot

__all__ = ["Answering", "probe_services"]

_PROBES: tuple[tuple[str, str, BaseModel, type[BaseModel]], ...] = (
    ("enforcer", RPC_SNAPSHOT, CallAttributes(model="health-check"), Snapshot),
    ("query service", QUERY_POSITION, PositionQuery(projection="policies"), PositionAnswer),
)


@dataclass(frozen=True)
class Answering:
    name: str
    ok: bool
    detail: str
    answered: bool = True
    """False when nothing answered (not running, or stuck); True when it answered, if
    only with an error (its database unavailable, say)."""


async def probe_services(nc: Client | None, settings: Settings, within: float) -> list[Answering]:
    """The enforcer's and the query service's answer to one harmless question each."""
    found = []
    for name, subject, request, answer in _PROBES:
        try:
            await ask(
                nc,
                settings.topology.rpc_subject(subject, caller=settings.caller),
                request,
                answer,
                within=within,
            )
            found.append(Answering(name, True, "answers"))
        except RpcFailure as exc:
            found.append(Answering(name, False, str(exc), not isinstance(exc, Unanswered)))
    return found
