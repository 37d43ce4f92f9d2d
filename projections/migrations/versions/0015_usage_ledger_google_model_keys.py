"""The usage ledger keeps each event's model by its key less Google's resource path
(``canonical_model``: "models/gemini-2.0-flash" is "gemini-2.0-flash"), as spend is now
counted and policies matched by model: rows an earlier release recorded under the
resource name get the bare model's key, so corrections of those events, and the
projections rebuilt from the log (their new shape rebuilds spend, history, report rollups
and the alert evaluator), count them with the model's other calls.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

from budget.pricing.genai import canonical_model
from projections.migrate import rekey_ledger

revision = "0015"
down_revision = "0014"


def upgrade() -> None:
    rekey_ledger(op.get_bind(), "model", canonical_model)


def downgrade() -> None:
    """The resource paths are gone: the keys stay, and an earlier release counts by them."""
