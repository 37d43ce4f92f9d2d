"""Projection versions record the shape (a digest of the DDL) they were built with, so a
worker of a release that changes a projection's tables rebuilds it from the log instead of
writing to tables of another shape. Existing versions get none: each projection is
rebuilt once, by its worker, after this upgrade.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.execute("ALTER TABLE projection_checkpoints ADD COLUMN IF NOT EXISTS shape text")


def downgrade() -> None:
    op.execute("ALTER TABLE projection_checkpoints DROP COLUMN shape")
