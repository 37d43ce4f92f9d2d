"""Drop the alert evaluator's cooldown tables: cooldowns are read from its alerts since
the cooldown fix of 2026-12-04, and the version that replaces an old one drops only the
tables its projection still names.

The evaluator's new shape makes its worker rebuild it from the log; nothing reads or
writes these tables meanwhile (old tables are never written by new code).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

from projections.migrate import drop_tables_matching

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.execute(drop_tables_matching("^alert_cooldowns_v[0-9]+$"))


def downgrade() -> None:
    """Nothing to make again: a downgraded evaluator's shape differs, so it rebuilds."""
