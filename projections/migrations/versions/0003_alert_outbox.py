"""Alert delivery: the outbox (one row per alert and channel) and the UI feed.

The evaluator inserts outbox rows in the transaction that raises the alert, and only while
its version is live, so alerts re-derived by a rebuild are never sent again; the notifier
sends them and records the outcome. Neither table is rebuilt by replay.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE alert_outbox (
            alert_id uuid NOT NULL,
            channel text NOT NULL,
            seq bigserial NOT NULL,
            subject text NOT NULL,
            payload jsonb NOT NULL,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'skipped', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            sent_at timestamptz,
            PRIMARY KEY (alert_id, channel)
        )
        """
    )
    op.execute(
        "CREATE INDEX alert_outbox_due ON alert_outbox (channel, seq) WHERE status = 'pending'"
    )
    op.execute(
        """
        CREATE TABLE alert_feed (
            alert_id uuid PRIMARY KEY,
            payload jsonb NOT NULL,
            delivered_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE alert_feed")
    op.execute("DROP TABLE alert_outbox")
