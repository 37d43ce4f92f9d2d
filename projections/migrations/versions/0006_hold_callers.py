"""Reservation holds record who reserved them: the caller named by the check's subject
(``<prefix>.rpc.<caller>.enforcer.check``). Only that caller, or the services' own
credential, may release them. Holds made before have none: only the services may release
them, and they expire within their ttl anyway.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.execute("ALTER TABLE reservation_holds ADD COLUMN IF NOT EXISTS caller text")


def downgrade() -> None:
    op.execute("ALTER TABLE reservation_holds DROP COLUMN caller")
