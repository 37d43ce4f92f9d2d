"""``percent_of``: a tenth of a percent, half up, exact at any size."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budget.percentages import percent_of


@pytest.mark.parametrize(
    ("part", "whole", "expected"),
    [
        ("1", "3", "33.3"),
        ("2", "3", "66.7"),
        ("0.0005", "1", "0.1"),  # half a tenth: up
        ("-0.0005", "1", "-0.1"),  # and away from zero below it
        ("-0.0004", "1", "0.0"),  # no negative zero
        ("3", "1", "300.0"),
        ("0.0075", "1E-30", "750000000000000000000000000000.0"),
        ("1E+12", "1E-40", "1" + "0" * 54 + ".0"),  # far past any decimal context's digits
    ],
)
def test_a_percentage_to_a_tenth(part: str, whole: str, expected: str) -> None:
    assert str(percent_of(Decimal(part), Decimal(whole))) == expected


def test_no_percentage_of_zero() -> None:
    assert percent_of(Decimal(5), Decimal(0)) is None
