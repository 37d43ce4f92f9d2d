"""The dashboard's budget bars: every policy's current window and the spend in it.

The same pieces as the projection report's budgets (``load_policies``, ``policy_window``,
the window's sums over ``spend_buckets``), plus one step that report skips: a policy that
limits each user (project, ...) separately gets a bar for each key that spent in its
window, the biggest spenders first (ranked from the report rollups), unless that key has a
policy of its own (which then replaces it, as ``budget.policies.applicable`` decides for
checks). A bar counts the calls in its window that had no price, so a window whose
calls were all unpriced shows as unpriced, never as $0 spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from budget.alerting import reached
from budget.percentages import percent_of
from budget.policies import PolicyWindow, own_keys, policy_window
from events import BudgetPolicy, BudgetScope
from events.policy import GLOBAL_SCOPE_KEY
from projections.engine.projection import Connection
from projections.policies import load_policies
from projections.readable import Rebuilding, readable_position
from projections.report_queries import ReportBuilder, ceil_quarter, floor_quarter
from projections.windows import WindowTotals, window_totals

__all__ = ["BudgetBar", "PolicyBars", "budget_bars"]

KEYS_SHOWN = 8
"""Bars per policy that limits each key separately; the rest are counted."""
_HEADROOM = Decimal("1.2")  # the bar's track runs past the limit, so an overrun shows

State = Literal["ok", "soft", "exceeded"]


@dataclass(frozen=True)
class BudgetBar:
    window: PolicyWindow
    totals: WindowTotals

    @property
    def spent(self) -> Decimal:
        """Of the priced calls: an unpriced call adds nothing it could be said to cost."""
        return self.totals.cost

    @property
    def unpriced(self) -> bool:
        """Calls were made in the window, none of them with a known price."""
        return self.totals.priced_cost is None

    @property
    def limit(self) -> Decimal:
        return self.window.policy.limit_amount

    @property
    def state(self) -> State:
        """As the alerts say it (``reached``): a threshold is reached at it and past $0, so
        a window without spend is ok, even under a $0 limit or a 0 % soft limit."""
        if reached(self.spent, self.limit):
            return "exceeded"
        return "soft" if reached(self.spent, self.window.policy.soft_limit) else "ok"

    @property
    def used_percent(self) -> Decimal | None:
        return percent_of(self.spent, self.limit)

    def position(self, amount: Decimal) -> float:
        """Where ``amount`` sits along the bar's track, 0 to 100."""
        scale = max(self.limit * _HEADROOM, self.spent)
        return float(amount * 100 / scale) if scale else 0.0


@dataclass(frozen=True)
class PolicyBars:
    policy: BudgetPolicy
    bars: list[BudgetBar]
    more_keys: int
    """Keys that spent under this policy but have no bar here (``KEYS_SHOWN``)."""
    unavailable: str | None = None
    """Why its keys' bars cannot be shown now (their ranking's rollups being rebuilt)."""

    @property
    def per_key(self) -> bool:
        return self.policy.scope is not BudgetScope.GLOBAL and self.policy.scope_key is None


async def budget_bars(conn: Connection, now: datetime) -> list[PolicyBars]:
    """Each policy in force at ``now`` (a custom one outside its range is not), by name."""
    policies = await load_policies(conn)
    own = own_keys(policies, now)
    found: list[tuple[BudgetPolicy, list[PolicyWindow], int, str | None]] = []
    for policy in sorted(policies, key=lambda p: (p.name.lower(), p.policy_id)):
        window = policy_window(policy, now)
        if window is None:
            continue
        start, end = window
        if policy.scope is BudgetScope.GLOBAL or policy.scope_key is not None:
            key = GLOBAL_SCOPE_KEY if policy.scope_key is None else policy.scope_key
            found.append((policy, [PolicyWindow(policy, key, start, end)], 0, None))
            continue
        exclude = [k for scope, k in own if scope is policy.scope]
        try:
            keys, total = await _spending_keys(conn, policy.scope, start, end, exclude)
        except Rebuilding as exc:  # no ranking, no bars: say why, not "no spend"
            found.append((policy, [], 0, str(exc)))
            continue
        windows = [PolicyWindow(policy, key, start, end) for key in keys]
        found.append((policy, windows, total - len(keys), None))
    every_window = [w for _, windows, _, _ in found for w in windows]
    totals = iter(await window_totals(conn, "spend_buckets", every_window))
    return [
        PolicyBars(policy, [BudgetBar(w, next(totals)) for w in windows], more, unavailable)
        for policy, windows, more, unavailable in found
    ]


async def _spending_keys(
    conn: Connection, scope: BudgetScope, start: datetime, end: datetime, exclude: list[str]
) -> tuple[list[str], int]:
    """The keys of ``scope`` with the most spend in [start, end), and how many spent. Ranked
    from the report rollups over the window widened to whole quarter hours (cheap however
    many calls it holds); each shown key's bar is then summed exactly by ``window_totals``."""
    await readable_position(conn, "reports")  # Rebuilding while its tables are another's
    start, end = floor_quarter(start), ceil_quarter(end)
    totals = await ReportBuilder(conn).scope_totals(conn, scope, start, end)
    keys = [t.key1 for t in totals if t.cost or t.requests]
    spending = [k for k in keys if k not in exclude]
    return spending[:KEYS_SHOWN], len(spending)
