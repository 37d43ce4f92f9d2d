"""The alert evaluator counts from the shared usage ledger (``ledger.COUNTING_LEDGER``)
instead of a ledger of its own: the ledger gets the index by stream sequence that its
reads use, and the evaluator's private ledger tables (and their views) go.

The evaluator's new shape makes its worker rebuild it from the log; nothing reads or
writes the dropped tables meanwhile (old tables are never written by new code).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

from projections.ledger import SHARED_LEDGER

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.execute(
        f"CREATE INDEX IF NOT EXISTS usage_ledger_stream_seq_idx ON {SHARED_LEDGER.usage}"
        " (stream_seq)"
    )
    op.execute(
        """DO $$
        DECLARE retired record;
        BEGIN
            FOR retired IN
                SELECT table_name FROM information_schema.tables
                WHERE table_schema = current_schema()
                  AND table_name ~ '^alert_spend_(ledger|corrections)_v[0-9]+$'
            LOOP
                EXECUTE format('DROP TABLE %I CASCADE', retired.table_name);
            END LOOP;
        END $$"""
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS usage_ledger_stream_seq_idx")
