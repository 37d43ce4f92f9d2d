"""The UI channel's feed is read by when alerts were delivered: every open live feed (each
console tab) asks for the rows delivered since it last looked, four times a second. The
table keeps every alert ever delivered, so without an index each look read all of it.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS alert_feed_delivered_at ON alert_feed (delivered_at)")


def downgrade() -> None:
    op.execute("DROP INDEX alert_feed_delivered_at")
