"""Projection engine: the registry of projection versions and their checkpoints.

The tables of each projection are versioned by the projection itself (``name_vN``, created
by its DDL, rebuilt from the log when it changes); these tables only record which version
is live and how far each version has read.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE projection_registry (
            name text PRIMARY KEY,
            active_version integer NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE projection_checkpoints (
            name text NOT NULL,
            version integer NOT NULL,
            stream_seq bigint NOT NULL DEFAULT 0,
            events_applied bigint NOT NULL DEFAULT 0,
            newest_event_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, version)
        )
        """
    )
