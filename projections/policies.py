"""Budget policies as set and deleted on the log, so they too are rebuilt by replay.

Changes are ordered by their position in the log and applied once per event id (see
``projections/change_log.py``): a delete from a host whose clock is behind still deletes,
and a late re-send of an older change never brings back or reverts a newer one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from budget.policies import canonical_policy
from events import BudgetPolicy, PolicyDeleted, PolicySet
from events.policy import POLICY_CHANGES
from projections.change_log import ChangeLog
from projections.engine.projection import Applied, Connection, Projection, physical

__all__ = ["PoliciesProjection", "load_policies"]


class PoliciesProjection(Projection):
    """``prefix`` names the table and views (``<prefix>_policy_log``, ``<prefix>_policies``),
    so another projection can keep its own copy with this code (the alert evaluator does)."""

    name: ClassVar[str] = "policies"
    event_types = POLICY_CHANGES

    def __init__(self, prefix: str = "budget") -> None:
        self.prefix = prefix
        self.log = ChangeLog(table=f"{prefix}_policy_log", key="policy_id", document="policy")
        self.tables = (self.log.table, self.log.events)

    def ddl(self, version: int) -> list[str]:
        return self.log.ddl(version)

    def views(self, version: int) -> dict[str, str]:
        table = physical(self.tables[0], version)
        return {
            self.tables[0]: f"SELECT * FROM {table}",
            f"{self.prefix}_policies": (
                "SELECT policy_id, policy ->> 'name' AS name, policy ->> 'scope' AS scope,"
                " policy ->> 'scope_key' AS scope_key, policy ->> 'period' AS period,"
                " (policy ->> 'limit_amount')::numeric AS limit_amount,"
                " policy ->> 'action' AS action, policy, changed_at"
                f" FROM {table} WHERE NOT deleted"
            ),
        }

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        for applied in batch:
            event = applied.event
            if isinstance(event, PolicySet):
                policy = event.policy
                await self.log.record(
                    conn, version, applied, policy.policy_id, policy.model_dump_json()
                )
            elif isinstance(event, PolicyDeleted):
                await self.log.record(conn, version, applied, event.policy_id, None)


async def load_policies(conn: Connection, log: str = "budget_policy_log") -> list[BudgetPolicy]:
    """The policies in ``log`` (by default the live projection's), in a stable order; a
    provider policy keyed as usage is (``canonical_policy``: one set before that rule, as
    "OpenAI", applies to "openai")."""
    cursor = await conn.execute(
        f"SELECT policy FROM {log} WHERE NOT deleted ORDER BY policy_id".encode()
    )
    return [
        canonical_policy(BudgetPolicy.model_validate(row[0])) for row in await cursor.fetchall()
    ]
