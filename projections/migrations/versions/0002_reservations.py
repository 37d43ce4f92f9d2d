"""Enforcement: reservation holds, one row per (reservation, enforced policy).

A hold keeps ``amount`` of a policy window's limit for a request in flight. It ends when
the request's usage reaches the live spend ledger (settled), when the caller releases
it, or at ``expires_at``. Holds are not facts: they are not replayed and never rebuilt.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE reservation_holds (
            reservation_id text NOT NULL,
            policy_id text NOT NULL,
            window_key text NOT NULL,
            window_start timestamptz NOT NULL,
            amount numeric NOT NULL CHECK (amount >= 0),
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (reservation_id, policy_id)
        )
        """
    )
    op.execute(
        "CREATE INDEX reservation_holds_window ON reservation_holds"
        " (policy_id, window_key, window_start) INCLUDE (amount, expires_at)"
    )
    op.execute("CREATE INDEX reservation_holds_expiry ON reservation_holds (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE reservation_holds")
