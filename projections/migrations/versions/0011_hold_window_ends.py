"""Reservation holds know when their window ends: the hold of a call recorded unpriced is
kept, counting the caller's estimate, until the call is priced or its window ends (a
window past counts in no check). Holds made before have none, and keep their expiry.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.execute("ALTER TABLE reservation_holds ADD COLUMN IF NOT EXISTS window_end timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE reservation_holds DROP COLUMN window_end")
