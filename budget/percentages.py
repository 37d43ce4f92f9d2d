"""Percentages of money: a budget's used share, a group's share of a total, a change.

Computed exactly with fractions, not in a decimal context: a limit may be as small as
1E-40 USD, so spend against it is a percentage of 40-odd digits, which a context's
precision (28 digits by default) cannot quantize.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

__all__ = ["percent_of"]

_HALF = Fraction(1, 2)


def percent_of(part: Decimal, whole: Decimal) -> Decimal | None:
    """``part`` as a percentage of ``whole`` to a tenth of a percent, half up (away from
    zero); None when ``whole`` is zero."""
    if not whole:
        return None
    tenths = Fraction(part) * 1000 / Fraction(whole)
    rounded = math.floor(abs(tenths) + _HALF)
    # From text: exact at any size (a context would round a long number to its precision).
    return Decimal(f"{'-' if tenths < 0 and rounded else ''}{rounded}E-1")
