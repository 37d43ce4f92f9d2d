"""The usage ledger keeps each event's model by its key (``canonical_model``: "GPT-4o" is
"gpt-4o"), as spend is now counted and policies matched by model: rows an earlier release
recorded with the caller's spelling get their key, so corrections of those events, and the
projections rebuilt from the log (their new shape rebuilds spend, history, report rollups
and the alert evaluator), count them under it too.

The key is Python's (``str.lower``), not PostgreSQL's ``lower()``, whose Unicode case
mapping depends on the database's locale: the distinct spellings are read, keyed here, and
only those that differ from their key are rewritten, in one statement.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

from budget.pricing.genai import canonical_model
from projections.ledger import SHARED_LEDGER

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    conn = op.get_bind()
    names = conn.execute(sa.text(f"SELECT DISTINCT model FROM {SHARED_LEDGER.usage}")).scalars()
    changed = {name: key for name in names if (key := canonical_model(name)) != name}
    if changed:
        conn.execute(
            sa.text(
                f"UPDATE {SHARED_LEDGER.usage} u SET model = m.key"
                " FROM unnest(CAST(:names AS text[]), CAST(:keys AS text[])) AS m(name, key)"
                " WHERE u.model = m.name"
            ),
            {"names": list(changed), "keys": list(changed.values())},
        )


def downgrade() -> None:
    """The spellings are gone: the keys stay, and an earlier release counts by them."""
