"""``budget policy set|list|show|delete`` and ``budget check``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

import typer
from pydantic import ValidationError

from budget.manager import BudgetManager
from budget.policies import PolicyFieldError, settable_policy
from events import BudgetPeriod, BudgetPolicy, BudgetScope, LimitAction
from events.policy import PolicyId
from events.rpc import CheckResult
from events.usage import MAX_TOKENS, Usd
from services.cli_context import (
    checked,
    database_queries,
    option_message,
    settings,
    tracker,
    validation_message,
)

__all__ = ["check", "policy_app"]

policy_app = typer.Typer(no_args_is_help=True)


@contextlib.asynccontextmanager
async def _manager() -> AsyncIterator[BudgetManager]:
    async with tracker() as started, database_queries() as queries:
        yield BudgetManager(settings(), started, queries=queries)


_SET_OPTIONS = {
    "limit_amount": "--limit",
    "scope_key": "--key",
    "custom_start": "--start",
    "custom_end": "--end",
    "soft_limit_percent": "--soft-percent",
    "policy_id": "--id",
    "name": "--name",
    "scope": "--scope",
    "period": "--period",
    "action": "--action",
    "timezone": "--timezone",
}
"""``policy set``'s option for each policy field: its errors name what the user typed."""


@policy_app.command("set")
def set_policy(
    name: Annotated[str, typer.Option(help="what people call it")],
    limit: Annotated[Decimal, typer.Option(help="limit in USD per period")],
    scope: Annotated[BudgetScope, typer.Option(help="what it limits")] = BudgetScope.GLOBAL,
    key: Annotated[
        str | None,
        typer.Option(help="the user/project/provider/model; omit to limit each one separately"),
    ] = None,
    period: Annotated[BudgetPeriod, typer.Option(help="when it resets")] = BudgetPeriod.MONTHLY,
    start: Annotated[
        datetime | None, typer.Option(help="custom period start (ISO 8601, on a quarter hour)")
    ] = None,
    end: Annotated[datetime | None, typer.Option(help="custom period end, exclusive")] = None,
    action: Annotated[
        LimitAction | None,
        typer.Option(help="what happens at the limit (default: budget.default_action, warn)"),
    ] = None,
    soft_percent: Annotated[
        Decimal | None,
        typer.Option(
            help="percent of the limit where warnings (and pacing) start (default:"
            " budget.soft_limit_percent, 80)"
        ),
    ] = None,
    timezone: Annotated[
        str | None, typer.Option(help="IANA zone for period boundaries (default UTC)")
    ] = None,
    policy_id: Annotated[
        str | None, typer.Option("--id", help="replace this policy (default: a new one)")
    ] = None,
) -> None:
    """Create a policy, or replace one with --id. Returns once the policy is live."""
    fields: dict[str, object] = {
        "name": name,
        "limit_amount": limit,
        "scope": scope,
        "scope_key": key,
        "period": period,
        "custom_start": _utc(start),
        "custom_end": _utc(end),
        "action": action or settings().default_action,
        "soft_limit_percent": settings().soft_limit_percent
        if soft_percent is None
        else soft_percent,
        "timezone": timezone,
    }
    if policy_id is not None:
        fields["policy_id"] = policy_id
    try:
        policy = BudgetPolicy.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(validation_message(exc, "policy", _SET_OPTIONS)) from None
    try:
        policy = settable_policy(policy)  # refused before anything connects
    except PolicyFieldError as exc:
        raise ValueError(option_message(exc.field, exc.message, _SET_OPTIONS)) from None

    async def go() -> None:
        async with _manager() as manager:
            await manager.set_policy(policy, set_by="budget policy set")

    asyncio.run(go())
    typer.echo(f"policy {policy.policy_id} set: {_describe(policy)}")


@policy_app.command("list")
def list_policies(
    scope: Annotated[BudgetScope | None, typer.Option(help="only this scope")] = None,
) -> None:
    """List the live policies."""

    async def go() -> list[BudgetPolicy]:
        async with _manager() as manager:
            return await manager.get_policies(scope)

    policies = asyncio.run(go())
    if not policies:
        typer.echo("no policies; add one with `budget policy set`")
        return
    for policy in policies:
        typer.echo(f"{policy.policy_id:<34} {_describe(policy)}")


@policy_app.command("show")
def show_policy(
    policy_id: Annotated[str, typer.Argument(callback=checked(PolicyId), help="the policy's id")],
) -> None:
    """Print one policy as JSON."""
    typer.echo(_existing(policy_id).model_dump_json(indent=2))


@policy_app.command("delete")
def delete_policy(
    policy_id: Annotated[str, typer.Argument(callback=checked(PolicyId), help="the policy's id")],
) -> None:
    """Delete a policy (a PolicyDeleted event; history keeps it)."""

    async def go() -> bool:
        async with _manager() as manager:
            return await manager.delete_policy(policy_id, deleted_by="budget policy delete")

    if not asyncio.run(go()):
        raise ValueError(f"no policy with id {policy_id!r}; see `budget policy list`")
    typer.echo(f"policy {policy_id} deleted")


def check(
    model: Annotated[str, typer.Argument(help="model id, e.g. gpt-4o")],
    tokens: Annotated[
        int, typer.Option(min=0, max=MAX_TOKENS, help="estimated tokens (priced as output)")
    ] = 0,
    user: Annotated[str | None, typer.Option(help="user id")] = None,
    project: Annotated[str | None, typer.Option(help="project id")] = None,
    provider: Annotated[str | None, typer.Option(help="provider (default: from the model)")] = (
        None
    ),
    cost: Annotated[
        Decimal | None,
        # the check request's own bound, so an estimate it refuses is refused before connecting
        typer.Option(callback=checked(Usd), help="estimated cost in USD, instead of --tokens"),
    ] = None,
    reserve: Annotated[
        bool, typer.Option(help="hold the estimate (expires unless usage settles it)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Would a call be allowed now? Exit status 0 if allowed, 1 if refused."""
    if tokens and cost is not None:  # the cost would win, the tokens dropped unsaid
        raise typer.BadParameter("give --tokens or --cost, not both", param_hint="--cost")

    async def go() -> CheckResult:
        async with _manager() as manager:
            return await manager.tracker.check_budget(
                model,
                tokens,
                user,
                project,
                provider=provider,
                estimated_cost=cost,
                reserve=reserve,
            )

    result = asyncio.run(go())
    if as_json:
        typer.echo(result.model_dump_json())
    else:
        typer.echo(f"{'allowed' if result.allowed else 'refused'}: {result.reason}")
        if result.limit is not None:
            typer.echo(
                f"spend {result.current_spend} of {result.limit} USD, remaining"
                f" {result.remaining}, this call ~{result.estimated_cost}"
            )
        if result.retry_after is not None:
            typer.echo(f"retry after {result.retry_after:.0f} s")
        if result.reservation_id:
            typer.echo(f"reservation {result.reservation_id}")
    raise typer.Exit(0 if result.allowed else 1)


def _utc(value: datetime | None) -> datetime | None:
    """Times without a zone on the command line are UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _existing(policy_id: str) -> BudgetPolicy:
    async def go() -> BudgetPolicy | None:
        async with _manager() as manager:
            return await manager.get_policy(policy_id)

    policy = asyncio.run(go())
    if policy is None:
        raise ValueError(f"no policy with id {policy_id!r}; see `budget policy list`")
    return policy


def _describe(policy: BudgetPolicy) -> str:
    target = policy.scope.value + (
        f" {policy.scope_key}" if policy.scope_key else "" if policy.scope == "global" else " each"
    )
    when = policy.period.value
    if policy.custom_start is not None:
        when = f"{policy.custom_start:%F %H:%M} to {policy.custom_end:%F %H:%M} UTC"
    zone = f" ({policy.timezone})" if policy.timezone else ""
    return (
        f"{policy.name!r}: {target}, {policy.limit_amount:f} USD {when}{zone},"
        f" {policy.action.value} (soft limit {policy.soft_limit_percent:f}%)"
    )
