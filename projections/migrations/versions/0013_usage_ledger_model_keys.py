"""The usage ledger keeps each event's model by its key (``canonical_model``: "GPT-4o" is
"gpt-4o"), as spend is now counted and policies matched by model: rows an earlier release
recorded with the caller's spelling get their key, so corrections of those events, and the
projections rebuilt from the log (their new shape rebuilds spend, history, report rollups
and the alert evaluator), count them under it too.

The key is Python's (``str.lower``), not PostgreSQL's ``lower()``, whose Unicode case
mapping depends on the database's locale (``rekey_ledger``).

Revision ID: 0013
Revises: 0012
"""

from alembic import op

from budget.pricing.genai import canonical_model
from projections.migrate import rekey_ledger

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    rekey_ledger(op.get_bind(), "model", canonical_model)


def downgrade() -> None:
    """The spellings are gone: the keys stay, and an earlier release counts by them."""
