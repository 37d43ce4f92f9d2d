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
from projections.migrate import drop_tables_matching

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.execute(
        f"CREATE INDEX IF NOT EXISTS usage_ledger_stream_seq_idx ON {SHARED_LEDGER.usage}"
        " (stream_seq)"
    )
    op.execute(drop_tables_matching("^alert_spend_(ledger|corrections)_v[0-9]+$", cascade=True))


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS usage_ledger_stream_seq_idx")
