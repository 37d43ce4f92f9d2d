"""``ttl_seconds`` in a check request is honoured up to the enforcer's maximum
(``reservation_ttl_max``); without it a hold lives ``reservation_ttl``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from budget.rpc import ask
from events import BudgetScope, Topology, utc_now
from events.rpc import RPC_CHECK, CheckRequest, CheckResult
from services.enforcer import EnforcerConfig

from enforcement import EnforcementStack, enforcement_stack, stack_settings
from support import rows, wait_for

pytestmark = pytest.mark.integration
CONFIG = EnforcerConfig(reservation_ttl=300, reservation_ttl_max=60, cleanup_interval=0.2)


async def reserve(
    stack: EnforcementStack, user: str, cost: str, ttl: float | None
) -> tuple[CheckResult, datetime, datetime]:
    """A check for ``user``, and the times just before and after it was answered."""
    request = CheckRequest(
        model="gpt-4o", user_id=user, estimated_cost=Decimal(cost), ttl_seconds=ttl
    )
    before = utc_now()
    result = await ask(
        stack.nc,
        stack.settings.topology.rpc_subject(RPC_CHECK, caller=stack.settings.caller),
        request,
        CheckResult,
        within=5,
    )
    return result, before, utc_now()


async def expiry(stack: EnforcementStack, reservation_id: str | None) -> datetime:
    found = await rows(
        stack.settings.database_url,
        "SELECT DISTINCT expires_at FROM reservation_holds WHERE reservation_id = %s",
        (reservation_id,),
    )
    assert len(found) == 1, found
    expires: datetime = found[0][0]
    return expires


@pytest.fixture
async def stack(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> AsyncIterator[EnforcementStack]:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    async with enforcement_stack(nc, settings, CONFIG) as running:
        await running.set_policy(scope=BudgetScope.USER, limit_amount="0.25", action="block")
        await running.enforcer_applies_policies()
        yield running


@pytest.mark.parametrize(
    ("asked", "granted"), [(1.5, 1.5), (86400, CONFIG.reservation_ttl_max), (None, 300)]
)
async def test_a_hold_lives_what_the_check_asks_up_to_the_maximum(
    stack: EnforcementStack, asked: float | None, granted: float
) -> None:
    result, before, after = await reserve(stack, "asker", "0.20", asked)
    assert result.allowed and result.enforced
    expires = await expiry(stack, result.reservation_id)
    ttl = timedelta(seconds=granted)
    assert before + ttl <= expires <= after + ttl


async def test_a_short_lived_hold_stops_counting_when_it_expires(stack: EnforcementStack) -> None:
    held, _, _ = await reserve(stack, "brief", "0.20", 0.5)
    assert held.allowed

    async def released() -> bool:
        """another $0.20 fits under the $0.25 limit: the first hold expired"""
        result, _, _ = await reserve(stack, "brief", "0.20", 60)
        return result.allowed

    await wait_for(released, within=30)
