"""A running enforcement stack for tests: the policies and spend workers, an enforcer and
the query service, in this process, on the test's NATS streams and database schema."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from budget.config import Settings
from budget.manager import BudgetManager
from budget.rpc import ask
from budget.tracker import UsageTracker, start_usage_tracker
from events import BudgetPolicy, Topology
from events.rpc import RPC_CHECK, CheckRequest, CheckResult
from services.enforcer import Enforcer, EnforcerConfig
from services.ops import prepare
from services.worker import run_projection

from support import query_service, rows, wait_for


def stack_settings(
    nats_url: str, database_url: str, topology: Topology, tmp_path: Path, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "database_url": database_url,
        "subject_prefix": topology.prefix,
        "spool_dir": tmp_path / "spool",
        "default_limit": None,
        **extra,
    }
    return Settings(**values)


@dataclass
class EnforcementStack:
    settings: Settings
    nc: Client
    enforcer: Enforcer | None
    tracker: UsageTracker
    manager: BudgetManager

    async def holds(self) -> list[tuple[Any, ...]]:
        return await rows(
            self.settings.database_url,
            "SELECT reservation_id, policy_id, amount FROM reservation_holds ORDER BY 1, 2",
        )

    async def set_policy(self, **fields: Any) -> BudgetPolicy:
        fields.setdefault("name", "test policy")
        fields["limit_amount"] = Decimal(str(fields["limit_amount"]))
        return await self.manager.set_policy(BudgetPolicy(**fields))

    async def enforcer_applies_policies(self) -> None:
        """Wait until the enforcer judges checks (of any user) by a policy."""
        subject = self.settings.topology.rpc_subject(RPC_CHECK, caller=self.settings.caller)
        probe = CheckRequest(
            model="gpt-4o", user_id="probe", estimated_cost=Decimal(0), reserve=False
        )

        async def applies() -> bool:
            """the enforcer applies a policy"""
            return bool((await ask(self.nc, subject, probe, CheckResult, within=5)).policies)

        await wait_for(applies, within=30)

    async def cancel_while_answer_in_flight(
        self, calling: asyncio.Task[Any], reserved: asyncio.Event, answer_delivered: asyncio.Event
    ) -> None:
        """Cancel ``calling`` once its check has reserved (``reserved``) and while the answer
        is still on its way (``answer_delivered`` not set yet): its hold must be released."""
        await reserved.wait()
        assert len(await self.holds()) == 1
        calling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await calling
        assert calling.cancelled()
        answer_delivered.set()

        async def released() -> bool:
            """the hold was released"""
            return await self.holds() == []

        await wait_for(released, within=30)


@contextlib.asynccontextmanager
async def enforcement_stack(
    nc: Client,
    settings: Settings,
    config: EnforcerConfig | None = None,
    *,
    enforcer: bool = True,
    enforcer_url: str | None = None,
) -> AsyncIterator[EnforcementStack]:
    """``enforcer=False``: the test runs its own (e.g. as a process to kill).
    ``enforcer_url``: the database URL the enforcer connects with, its own role's as under
    ``budget up`` (else the owner's, ``settings.database_url``)."""
    await prepare(settings.nats_url, settings.database_url, settings)
    own = (
        settings
        if enforcer_url is None
        else settings.model_copy(update={"database_url": enforcer_url})
    )
    async with projection_workers(nc, settings, "policies", "spend"):
        running = Enforcer(own, nc, config) if enforcer else None
        if running is not None:
            await running.start()
        tracker = await start_usage_tracker(settings)
        try:
            async with query_service(nc, settings):
                manager = BudgetManager(settings, tracker)
                yield EnforcementStack(settings, nc, running, tracker, manager)
        finally:
            await tracker.close()
            if running is not None:
                await running.stop()


@contextlib.asynccontextmanager
async def projection_workers(nc: Client, settings: Settings, *names: str) -> AsyncIterator[None]:
    """The named projections' workers (``services.worker.run_projection``) for the block."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_projection(name, nc, settings, stop)) for name in names]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
