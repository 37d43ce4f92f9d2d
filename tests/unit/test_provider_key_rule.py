"""A provider's key (``canonical_provider``, through ``canonical_key``), property-tested:
the one rule by which prices are found, spend is counted and provider policies match,
however a producer spells the provider."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from budget.policies import CallScope, applicable, canonical_policy
from budget.pricing.genai import canonical_provider, snapshot
from budget.pricing.supplement import PROVIDER_ALIASES
from events import BudgetPolicy, BudgetScope
from projections.usage_rows import KEYS

NOW = datetime(2026, 11, 29, tzinfo=UTC)
SPELT = ["OpenAI", "openai", " OPENAI ", "Google", "gemini", "google-gla", "xAI", "acme"]
names = st.one_of(st.sampled_from(SPELT), st.text(min_size=1, max_size=40))
# The provider matching (genai-prices' ids and match rules, our aliases) that the usage
# ledger's provider keys were computed with: see the last test.
MATCHING = "b1675f85a804de3f"


def provider_policy(key: str) -> BudgetPolicy:
    return BudgetPolicy(
        name="p", scope=BudgetScope.PROVIDER, scope_key=key, limit_amount=Decimal(1)
    )


@given(names)
def test_the_key_is_its_own_key_and_the_call_s_key(name: str) -> None:
    key = canonical_provider(name)
    assert canonical_provider(key) == key
    assert CallScope(model="m", provider=name).key(BudgetScope.PROVIDER) == (key or None)


def test_aliases_are_the_price_data_s_ids() -> None:
    keys = [canonical_provider(name) for name in SPELT]
    assert keys == ["openai", "openai", "openai", "google", "google", "google", "x-ai", "acme"]


@given(names, names)
def test_a_provider_policy_counts_a_call_exactly_when_their_keys_agree(
    policy_key: str, provider: str
) -> None:
    """Loaded (``canonical_policy``: a policy stored in any spelling), a provider policy
    applies to the calls of its key, however a check spelt the provider."""
    policy = canonical_policy(provider_policy(policy_key))
    found = applicable([policy], CallScope(model="m", provider=provider), NOW)
    same = canonical_provider(policy_key) == canonical_provider(provider) != ""
    assert [w.key for w in found] == ([canonical_provider(provider)] if same else [])


def test_the_provider_matching_is_the_one_the_ledger_was_keyed_with() -> None:
    """A release whose provider matching differs (a genai-prices upgrade, a new alias)
    keys some providers otherwise: it must also change ``usage_rows.KEYS`` (so the
    counting projections rebuild) and rekey the usage ledger in a migration (as 0014
    did), then pin the new matching here."""
    matching = repr(
        (
            sorted(PROVIDER_ALIASES.items()),
            [(p.id, repr(p.provider_match)) for p in snapshot().providers],
        )
    )
    digest = hashlib.sha256(matching.encode()).hexdigest()[:16]
    assert digest == MATCHING, f"provider matching changed ({digest}): see the docstring"
    assert "provider_key: canonical_provider" in KEYS
