"""Divided prices (audio per second, minute or hour; requests per thousand) cost exactly
quantity x price / divisor, rounded once, half to even, to COST_PLACES decimal places
(docs/pricing.md), checked against a Decimal reference with ample precision."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from hypothesis import given
from hypothesis import strategies as st

from budget.pricing import Priced
from budget.pricing.rates import COST_PLACES, RateCard, divided_cost
from events.usage import MAX_AUDIO_SECONDS, MAX_TOKENS, Usage

prices = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(1000), places=6)
divisors = st.sampled_from([1, 60, 1000, 3600, 7, 1_000_000])
seconds = st.decimals(min_value=0, max_value=MAX_AUDIO_SECONDS, places=3)


def reference(quantity: Decimal, price: Decimal, per: int) -> Decimal:
    """Computed with 200 digits, then rounded to COST_PLACES: for these inputs the 200
    digits hold the exact quotient's every digit that can decide the rounding."""
    with localcontext(prec=200):
        return (quantity * price / per).quantize(
            Decimal(1).scaleb(-COST_PLACES), rounding=ROUND_HALF_EVEN
        )


def audio_card(price: Decimal, per: int) -> RateCard:
    return RateCard(
        provider="acme",
        model="listen-1",
        layer="override",
        data_version="test",
        effective_from=None,
        tokens={},
        audio=(price, per),
    )


@given(seconds, prices, divisors)
def test_audio_cost_equals_the_reference(quantity: Decimal, price: Decimal, per: int) -> None:
    result = audio_card(price, per).cost(Usage(audio_seconds=quantity))
    assert isinstance(result, Priced)
    assert result.cost == reference(quantity, price, per)
    exponent = result.cost.as_tuple().exponent
    assert isinstance(exponent, int) and exponent >= -COST_PLACES


@given(prices, divisors)
def test_the_per_second_rate_shown_follows_the_same_rule(price: Decimal, per: int) -> None:
    source = audio_card(price, per).tiers[0].source
    assert source.rates["audio_seconds"] == reference(Decimal(1), price, per)


@given(st.integers(min_value=0, max_value=10**30), prices, divisors)
def test_an_exact_quotient_is_never_rounded(units: int, price: Decimal, per: int) -> None:
    with localcontext(prec=200):
        quantity = Decimal(units * per).scaleb(-3)  # a multiple of the divisor, in 1/1000s
        exact = quantity * price / per
    assert divided_cost(quantity, price, per) == exact


@given(
    st.integers(min_value=0, max_value=MAX_TOKENS),
    st.decimals(min_value=0, max_value=Decimal(1000), places=7),
    seconds,
    prices,
    divisors,
)
def test_a_call_costs_its_tokens_plus_its_audio_exactly(
    tokens: int, rate: Decimal, quantity: Decimal, price: Decimal, per: int
) -> None:
    card = RateCard(
        provider="acme",
        model="talk-1",
        layer="override",
        data_version="test",
        effective_from=None,
        tokens={"output_text": ((-1, rate),)},
        audio=(price, per),
    )
    result = card.cost(Usage(output_text=tokens, audio_seconds=quantity))
    assert isinstance(result, Priced)
    with localcontext(prec=200):
        expected = Decimal(tokens) * rate / 10**6 + reference(quantity, price, per)
    assert result.cost == expected
