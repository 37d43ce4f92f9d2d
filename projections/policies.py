"""Budget policies as set and deleted on the log, so they too are rebuilt by replay.

A deletion leaves a tombstone and every change carries its event time: a late re-send of
an older ``PolicySet`` (from a producer's spool, past JetStream's duplicate window) never
brings back or reverts a policy changed after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from events import BudgetPolicy, PolicyDeleted, PolicySet
from events.policy import POLICY_CHANGES
from projections.base import Applied, Connection, Projection, physical

__all__ = ["PoliciesProjection", "load_policies"]


class PoliciesProjection(Projection):
    """``prefix`` names the table and views (``<prefix>_policy_log``, ``<prefix>_policies``),
    so another projection can keep its own copy with this code (the alert evaluator does)."""

    name: ClassVar[str] = "policies"
    event_types = POLICY_CHANGES

    def __init__(self, prefix: str = "budget") -> None:
        self.prefix = prefix
        self.tables = (f"{prefix}_policy_log",)

    def ddl(self, version: int) -> list[str]:
        return [
            f"""CREATE TABLE {physical(self.tables[0], version)} (
                policy_id text PRIMARY KEY,
                policy jsonb,
                changed_at timestamptz NOT NULL,
                stream_seq bigint NOT NULL,
                deleted boolean NOT NULL)"""
        ]

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
        table = physical(self.tables[0], version)
        for applied in batch:
            event = applied.event
            if isinstance(event, PolicySet):
                policy_id, document, deleted = (
                    event.policy.policy_id,
                    event.policy.model_dump_json(),
                    False,
                )
            elif isinstance(event, PolicyDeleted):
                policy_id, document, deleted = event.policy_id, None, True
            else:
                continue
            await conn.execute(
                f"""INSERT INTO {table} (policy_id, policy, changed_at, stream_seq, deleted)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (policy_id) DO UPDATE SET policy = EXCLUDED.policy,
                    changed_at = EXCLUDED.changed_at, stream_seq = EXCLUDED.stream_seq,
                    deleted = EXCLUDED.deleted
                WHERE ({table}.changed_at, {table}.stream_seq)
                    < (EXCLUDED.changed_at, EXCLUDED.stream_seq)""".encode(),
                (policy_id, document, event.occurred_at, applied.stream_seq, deleted),
            )


async def load_policies(conn: Connection, log: str = "budget_policy_log") -> list[BudgetPolicy]:
    """The policies in ``log`` (by default the live projection's), in a stable order."""
    cursor = await conn.execute(
        f"SELECT policy FROM {log} WHERE NOT deleted ORDER BY policy_id".encode()
    )
    return [BudgetPolicy.model_validate(row[0]) for row in await cursor.fetchall()]
