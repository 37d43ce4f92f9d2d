"""What a check counts for a call before it is made (``BudgetChecker.estimate``): its
tokens at the output price, or for a model without output (embeddings) at its input
price; kept no longer than a price holds (some change on the half hour)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import budget.checks
from budget.checks import BudgetChecker
from budget.config import Settings
from budget.pricing import PricingRegistry


@pytest.fixture
def checker(tmp_path: Path) -> BudgetChecker:
    return BudgetChecker(Settings(spool_dir=tmp_path), PricingRegistry())


def test_an_embedding_models_estimate_is_its_input_price(checker: BudgetChecker) -> None:
    # text-embedding-3-small: $0.02 per million input tokens, no output price
    assert checker.estimate("text-embedding-3-small", "openai", 1_000_000) == Decimal("0.02")


def test_no_tokens_are_estimated_at_a_plain_zero(checker: BudgetChecker) -> None:
    """Shown as it is (``budget check``'s "this call ~0", the API's JSON), not as the
    price's scale, "0E-8"; a model without a price still has no estimate."""
    assert str(checker.estimate("gpt-4o", "openai", 0)) == "0"
    assert checker.estimate("in-house-model-7", "acme", 0) is None


def test_an_estimate_follows_a_price_that_changes_on_the_half_hour(
    checker: BudgetChecker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeepSeek's off-peak output price starts at 16:30 UTC: an estimate made at 16:10 is
    not the one at 16:45."""
    for minute, expected in ((10, Decimal("1.1")), (45, Decimal("0.55"))):
        now = datetime(2026, 11, 29, 16, minute, tzinfo=UTC)
        monkeypatch.setattr(budget.checks, "utc_now", lambda now=now: now)
        assert checker.estimate("deepseek-chat", "deepseek", 1_000_000) == expected
