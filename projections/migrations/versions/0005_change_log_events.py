"""Change logs (policies, alert rules) remember the ids of the events applied to them, so
changes can be ordered by log position without a late re-send reverting a newer change.

Creates the new ``*_events`` table of every existing version of the ``policies`` and
``alerts`` projections (new versions get it from the projection's own DDL). They start
empty: a re-send of an event applied before this upgrade is not recognised until the two
projections are rebuilt (``budget projections rebuild policies``, then ``alerts``).

Revision ID: 0005
Revises: 0004
"""

from alembic import op
from sqlalchemy import text

revision = "0005"
down_revision = "0004"

_EVENT_TABLES = {
    "policies": ("budget_policy_log_events",),
    "alerts": ("alert_policy_log_events", "alert_rule_log_events"),
}


def _existing() -> list[str]:
    bind = op.get_bind()
    versions = bind.execute(
        text("SELECT name, version FROM projection_checkpoints WHERE name = ANY(:names)"),
        {"names": list(_EVENT_TABLES)},
    ).fetchall()
    return [f"{table}_v{version}" for name, version in versions for table in _EVENT_TABLES[name]]


def upgrade() -> None:
    for table in _existing():
        op.execute(f"CREATE TABLE IF NOT EXISTS {table} (event_id uuid PRIMARY KEY)")


def downgrade() -> None:
    for table in _existing():
        op.execute(f"DROP TABLE IF EXISTS {table}")
