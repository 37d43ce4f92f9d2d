"""An alert is given up after a day of failed sends, as docs/alerts.md says: counted from
its first failure, not from when it was queued. An alert queued while no notifier ran
for a day had been given up at its first failed try.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"


def upgrade() -> None:
    op.execute("ALTER TABLE alert_outbox ADD COLUMN IF NOT EXISTS failing_since timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE alert_outbox DROP COLUMN failing_since")
