"""Drop the alert evaluator's cooldown tables: cooldowns are read from its alerts since
the cooldown fix of 2026-12-04, and the version that replaces an old one drops only the
tables its projection still names.

The evaluator's new shape makes its worker rebuild it from the log; nothing reads or
writes these tables meanwhile (old tables are never written by new code).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.execute(
        """DO $$
        DECLARE retired record;
        BEGIN
            FOR retired IN
                SELECT table_name FROM information_schema.tables
                WHERE table_schema = current_schema()
                  AND table_name ~ '^alert_cooldowns_v[0-9]+$'
            LOOP
                EXECUTE format('DROP TABLE %I', retired.table_name);
            END LOOP;
        END $$"""
    )


def downgrade() -> None:
    """Nothing to make again: a downgraded evaluator's shape differs, so it rebuilds."""
