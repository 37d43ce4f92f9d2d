"""Each projection version's checkpoint keeps a digest of the message it stands on, so a
worker can tell that the event log is still the one it read: a log recreated (NATS's data
lost, a new stream) and grown past the checkpoint would otherwise be read on from there,
every event up to it skipped without an error. Existing checkpoints get none until their
next batch.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.execute("ALTER TABLE projection_checkpoints ADD COLUMN IF NOT EXISTS message_digest bytea")


def downgrade() -> None:
    op.execute("ALTER TABLE projection_checkpoints DROP COLUMN message_digest")
