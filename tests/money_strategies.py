"""Hypothesis strategies for money at the contract's bounds (events/usage.py)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

from events.usage import MAX_COST, MAX_DECIMAL_PLACES

__all__ = ["maximal_costs", "maximal_deltas"]

maximal_costs = st.builds(
    lambda whole, fraction: Decimal(f"{whole}.{fraction:0{MAX_DECIMAL_PLACES}d}"),
    st.integers(0, MAX_COST - 1),
    st.integers(0, 10**MAX_DECIMAL_PLACES - 1),
)
"""Costs anywhere in the contract's range, mostly with more than 28 significant digits.
(Not ``st.decimals(places=...)``: it rounds what it generates to 28 digits.)"""

maximal_deltas = st.builds(
    lambda cost, negative: cost.copy_negate() if negative else cost,  # exact, unlike -cost
    maximal_costs,
    st.booleans(),
)
"""Differences of two costs: either sign, as many digits."""
