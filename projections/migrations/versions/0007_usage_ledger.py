"""The usage ledger shared by spend, history and report rollups (``projections/ledger.py``):
one row per usage event and per correction, written by whichever of them reaches it first.
Projections built before it have ledgers of their own; their new shape makes the workers
rebuild them from the log, which fills this one.

The tables are made by the ledger's own DDL, so they cannot differ from what it reads.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

from projections.ledger import SHARED_LEDGER

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    for statement in SHARED_LEDGER.ddl():
        op.execute(statement.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1))


def downgrade() -> None:
    for table in SHARED_LEDGER.tables:
        op.execute(f"DROP TABLE IF EXISTS {table}")
