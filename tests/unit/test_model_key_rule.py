"""A model's key (``canonical_model``), property-tested: the one rule by which prices are
found, spend is counted and policies match, whatever the caller's case or the text."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import projections.ledger
from budget.policies import (
    CallScope,
    PolicyFieldError,
    applicable,
    canonical_policy,
    settable_policy,
)
from budget.pricing import PricingRegistry
from budget.pricing.genai import canonical_model
from events import BudgetPolicy, BudgetScope, Usage
from projections.engine.shapes import shape_of
from projections.registry import PROJECTIONS

NOW = datetime(2026, 11, 29, tzinfo=UTC)
REGISTRY = PricingRegistry()
PRICED = ["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro", "o3", "dall-e-3", "grok-3"]
# Google's resource paths of a model, which its SDKs accept (in any case, spaced).
GOOGLE_PATHS = [
    "models/",
    "publishers/google/models/",
    "projects/p-1/locations/us-central1/publishers/google/models/",
    " Models/ ",
]
names = st.one_of(
    st.text(min_size=1, max_size=40),
    st.builds(str.__add__, st.sampled_from(GOOGLE_PATHS), st.text(max_size=20)),
)


def recased(name: str, flips: list[bool]) -> str:
    """``name`` with the letters ``flips`` marks upper-cased, the others lower-cased."""
    return "".join(
        c.upper() if i < len(flips) and flips[i] else c.lower() for i, c in enumerate(name)
    )


def model_policy(key: str) -> BudgetPolicy:
    return BudgetPolicy(name="p", scope=BudgetScope.MODEL, scope_key=key, limit_amount=Decimal(1))


@given(names)
def test_the_key_is_its_own_key_and_the_call_s_key(name: str) -> None:
    key = canonical_model(name)
    assert canonical_model(key) == key
    assert CallScope(model=name).key(BudgetScope.MODEL) == (key or None)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PRICED), st.lists(st.booleans(), max_size=20))
def test_every_casing_of_a_priced_model_has_its_key_and_its_price(
    name: str, flips: list[bool]
) -> None:
    spelt = recased(name, flips)
    assert canonical_model(spelt) == name
    usage = Usage(input_uncached=1000, output_text=500)
    assert REGISTRY.price(provider=None, model=spelt, usage=usage, at=NOW) == REGISTRY.price(
        provider=None, model=name, usage=usage, at=NOW
    )


@given(names, names)
def test_a_model_policy_counts_a_call_exactly_when_their_keys_agree(
    policy_key: str, model: str
) -> None:
    """Loaded (``canonical_policy``: a policy stored in any case), a model policy applies
    to the calls of its key, and to no call when its key is empty."""
    policy = canonical_policy(model_policy(policy_key))
    found = applicable([policy], CallScope(model=model), NOW)
    same = canonical_model(policy_key) == canonical_model(model) != ""
    assert [w.key for w in found] == ([canonical_model(model)] if same else [])


@given(st.sampled_from(["gemini-2.0-flash", "gemini-2.5-pro"]), st.sampled_from(GOOGLE_PATHS))
def test_google_s_resource_name_of_a_model_is_the_model(name: str, path: str) -> None:
    """ "models/gemini-2.0-flash" (google-genai's, Vertex AI's) is priced as the bare
    name: a policy on either counts calls spelt either way, under one key."""
    spelt = path + name
    assert canonical_model(spelt) == name
    for policy_key, model in ((name, spelt), (spelt, name)):
        policy = canonical_policy(model_policy(policy_key))
        found = applicable([policy], CallScope(model=model), NOW)
        assert [w.key for w in found] == [name]
    usage = Usage(input_uncached=1000, output_text=500)
    assert REGISTRY.price(provider="google", model=spelt, usage=usage, at=NOW) == REGISTRY.price(
        provider="google", model=name, usage=usage, at=NOW
    )


def test_other_model_paths_are_names() -> None:
    """Fireworks' ids are paths ending in "models/..." in the price data itself."""
    name = "accounts/fireworks/models/deepseek-v3p2"
    assert canonical_model(name) == name


def test_a_model_policy_is_set_under_the_key_and_never_under_an_empty_one() -> None:
    assert settable_policy(model_policy(" GPT-4o ")).scope_key == "gpt-4o"
    with pytest.raises(PolicyFieldError, match="scope_key: must not be empty"):
        settable_policy(model_policy("   "))


def test_the_key_lower_cases_as_price_lookups_do_and_folds_no_further() -> None:
    """``lower()``, not ``casefold()``: genai-prices looks names up lower-cased, so a
    key merging "ß" with "ss" would join names no price lookup joins."""
    assert canonical_model("Straße-1") == "straße-1" != canonical_model("STRASSE-1")


def test_a_new_key_rule_reshapes_every_projection_counting_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Their tables may stay as they were: a rule keying their rows otherwise still
    changes their shape, so an upgrade rebuilds them from the log (``engine.shapes``)."""
    before = {name: shape_of(p) for name, p in PROJECTIONS.items()}
    monkeypatch.setattr(projections.ledger, "KEYS", "model_key: another rule")
    changed = {name for name, p in PROJECTIONS.items() if shape_of(p) != before[name]}
    assert changed == {"spend", "history", "reports", "alerts"}
