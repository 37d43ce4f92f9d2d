"""Apply the database migrations (alembic) programmatically: ``budget migrate``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from projections.db import sqlalchemy_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["drop_tables_matching", "migrate", "rekey_ledger"]

MIGRATIONS = Path(__file__).parent / "migrations"


def drop_tables_matching(pattern: str, *, cascade: bool = False) -> str:
    """A statement for a migration: drop every table of the current schema whose name
    matches the regular expression ``pattern`` (a retired table at every version), with
    what depends on it if ``cascade`` (its views)."""
    drop = "DROP TABLE %I CASCADE" if cascade else "DROP TABLE %I"
    return f"""DO $$
        DECLARE retired record;
        BEGIN
            FOR retired IN
                SELECT table_name FROM information_schema.tables
                WHERE table_schema = current_schema()
                  AND table_name ~ '{pattern}'
            LOOP
                EXECUTE format('{drop}', retired.table_name);
            END LOOP;
        END $$"""


def rekey_ledger(conn: Connection, column: str, key: Callable[[str], str]) -> None:
    """For a migration (``conn``: alembic's): the usage ledger's ``column`` holds ``key``
    of each value, as a new key rule counts it. The key is Python's (the rule every
    consumer applies), never SQL's, whose case mapping depends on the database's locale:
    the distinct values are read, keyed here, and only those that differ from their key
    are rewritten, in one statement."""
    import sqlalchemy as sa

    from projections.ledger import SHARED_LEDGER

    values = conn.execute(sa.text(f"SELECT DISTINCT {column} FROM {SHARED_LEDGER.usage}"))
    changed = {value: new for value in values.scalars() if (new := key(value)) != value}
    if changed:
        conn.execute(
            sa.text(
                f"UPDATE {SHARED_LEDGER.usage} u SET {column} = k.key"
                " FROM unnest(CAST(:values AS text[]), CAST(:keys AS text[])) AS k(value, key)"
                f" WHERE u.{column} = k.value"
            ),
            {"values": list(changed), "keys": list(changed.values())},
        )


def migrate(database_url: str, *, revision: str = "head") -> None:
    """Upgrade to ``revision`` (the latest by default; an earlier one for upgrade tests)."""
    # Imported here: alembic and sqlalchemy cost ~0.35 s of CPU to import, and every process
    # of the stack loads this module through the CLI; only ``migrate`` and ``up`` run it.
    import sqlalchemy.exc
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    try:
        command.upgrade(config, revision)
    except sqlalchemy.exc.OperationalError as exc:
        # The driver's error, as every other connection reports it.
        raise (exc.orig or exc) from exc
