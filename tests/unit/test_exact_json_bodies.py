"""JSON bodies keep each number as written: a Decimal field gets the amount sent, not its
nearest binary float; every other field reads the number as before."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import BaseModel

from services.api.exact_json import ExactJsonRoute, loads
from services.api.routes import AREAS


class _Fields(BaseModel):
    amount: Decimal
    seconds: float
    tokens: int


def test_a_decimal_field_gets_the_number_as_written_and_others_as_before() -> None:
    read = _Fields.model_validate(
        loads(b'{"amount": 100.000000000000001, "seconds": 1.5, "tokens": 1000.0}')
    )
    assert read == _Fields(amount=Decimal("100.000000000000001"), seconds=1.5, tokens=1000)
    assert loads("[1E-7, 2]") == [1e-7, 2] and repr(loads("[1E-7]")[0]) == "1E-7"


def test_every_api_route_reads_its_body_so() -> None:
    """A route added later without the route class would read amounts as floats again."""
    routes = [route for module in AREAS for route in module.router.routes]
    assert routes
    assert [r.path for r in routes if not isinstance(r, ExactJsonRoute)] == []


def test_a_key_given_twice_is_refused_where_it_is_given_again() -> None:
    """json.loads took the last of two limits; which one the sender meant is unknown."""
    body = b'{"name": "n", "tags": {"a": "1"}, "limit_amount": "1", "limit_amount": "100"}'
    with pytest.raises(json.JSONDecodeError) as refused:
        loads(body)
    assert refused.value.msg == "'limit_amount' is given twice; send each field once"
    assert body[refused.value.pos :].startswith(b'"limit_amount": "100"')
    with pytest.raises(json.JSONDecodeError, match="'a' is given twice"):
        loads('{"tags": {"a": "1", "a": "2"}}')
