"""Migrations on a real PostgreSQL: what a release retires goes from databases an older
release made."""

from __future__ import annotations

import pytest

from projections.db import connect
from projections.migrate import migrate

pytestmark = pytest.mark.integration


async def tables(url: str) -> set[str]:
    async with await connect(url) as conn:
        cursor = await conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {row[0] for row in await cursor.fetchall()}


async def test_the_alert_cooldown_tables_of_older_releases_are_dropped(pg_schema_url: str) -> None:
    migrate(pg_schema_url, revision="0007")
    async with await connect(pg_schema_url) as conn:
        for table in ("alert_cooldowns_v1", "alert_cooldowns_v12", "alerts_v1"):
            await conn.execute(f"CREATE TABLE {table} (rule_id text)")
    assert {"alert_cooldowns_v1", "alert_cooldowns_v12"} <= await tables(pg_schema_url)
    migrate(pg_schema_url)
    left = await tables(pg_schema_url)
    assert not {t for t in left if t.startswith("alert_cooldowns")}
    assert {"alerts_v1", "usage_ledger", "alert_outbox"} <= left


async def test_the_evaluators_private_ledger_goes_with_its_views(pg_schema_url: str) -> None:
    migrate(pg_schema_url, revision="0008")
    async with await connect(pg_schema_url) as conn:
        for table in ("alert_spend_ledger_v3", "alert_spend_corrections_v3", "alert_spend_v3"):
            await conn.execute(f"CREATE TABLE {table} (event_id uuid)")
        await conn.execute("CREATE VIEW alert_spend_ledger AS SELECT * FROM alert_spend_ledger_v3")
    migrate(pg_schema_url)
    left = await tables(pg_schema_url)
    assert not {t for t in left if t.startswith(("alert_spend_ledger", "alert_spend_corr"))}
    assert {"alert_spend_v3", "usage_ledger"} <= left
