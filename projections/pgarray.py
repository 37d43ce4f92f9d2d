"""PostgreSQL array literals built in one pass.

Binding whole columns as ``unnest(%s::type[])`` from one text literal is several times
cheaper than letting the driver adapt each element, and this is the per-event hot path.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["array_literal"]


def array_literal(values: Iterable[object]) -> str:
    """``{a,b,NULL}``; strings are quoted and escaped, everything else uses ``str()``
    (UUID, int, Decimal — PostgreSQL accepts its exponent form — and aware datetimes)."""
    return "{" + ",".join(_element(v) for v in values) + "}"


def _element(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)
