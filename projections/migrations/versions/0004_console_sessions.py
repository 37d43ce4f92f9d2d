"""Console sessions: one row per sign-in, so signing out ends the session on the server
and a copied cookie stops working with it. Not a projection: sessions are not facts on the
log, and losing them only signs people out.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE console_sessions (
            session_id text PRIMARY KEY,
            key_id text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            ended_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX console_sessions_started_at ON console_sessions (started_at)")


def downgrade() -> None:
    op.execute("DROP TABLE console_sessions")
