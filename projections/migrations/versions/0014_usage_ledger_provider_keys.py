"""The usage ledger keeps each event's provider by its key (``canonical_provider``:
"OpenAI" is "openai", "Gemini" is "google", the id prices and provider policies use), as
spend is now counted by provider whoever published the event: rows an earlier release
recorded with the spelling of a producer other than the Python tracker get their key, so
corrections of those events, and the projections rebuilt from the log (their new shape
rebuilds spend, history, report rollups and the alert evaluator), count them under it
too.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

from budget.pricing.genai import canonical_provider
from projections.migrate import rekey_ledger

revision = "0014"
down_revision = "0013"


def upgrade() -> None:
    rekey_ledger(op.get_bind(), "provider", canonical_provider)


def downgrade() -> None:
    """The spellings are gone: the keys stay, and an earlier release counts by them."""
