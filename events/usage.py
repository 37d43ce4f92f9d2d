"""``UsageRecorded``: one AI provider call, its usage in non-overlapping classes, and its cost."""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from datetime import date
from decimal import Context, Decimal, localcontext
from typing import Annotated, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.config import JsonDict

from events.envelope import Event
from events.limits import NAME_MAX

__all__ = [
    "MAX_AUDIO_SECONDS",
    "MAX_COST",
    "MAX_DECIMAL_PLACES",
    "MAX_IMAGES",
    "MAX_TOKENS",
    "MAX_WRITTEN_PLACES",
    "MONEY_PRECISION",
    "CallKind",
    "ImageUsage",
    "PriceSource",
    "Usage",
    "UsageRecorded",
    "UsageRepriced",
    "WrittenPlaces",
    "exact_decimal",
    "exact_money",
]

# The bounds of one call's usage and cost (docs/architecture.md). Each fits the
# projections' per-event columns (bigint, integer, numeric); totals are summed in numeric
# columns, which no number of maximal calls can overflow.
MAX_TOKENS = 10**12
"""The most tokens of one class one call may record: far beyond any model's context."""
MAX_AUDIO_SECONDS = 10**9
MAX_IMAGES = 10**6
MAX_COST = 10**12
"""The most USD one call may cost (the maximal usage at today's dearest rates is ~10**10)."""
MAX_DECIMAL_PLACES = 40
"""Digits after the point of ``cost`` and ``audio_seconds``: a cost priced with 28
significant digits stays exact down to 10**-12 USD."""
MAX_WRITTEN_PLACES = 1000
"""Digits after the point of ``cost`` and ``audio_seconds`` as written, trailing zeros
included (``0E-20000`` has 20,000): PostgreSQL stores at most 16,383, so a value written
with more was refused by the database, after the contract had accepted it (and counted by
whichever consumer did not store it); 1000 is also the most a declared numeric may keep."""
MONEY_PRECISION = len(str(MAX_COST)) + MAX_DECIMAL_PLACES + 20
"""Significant digits of arithmetic on costs and spend totals. Python's default decimal
context keeps 28 and rounds beyond them, silently: a cost at the bounds above has 53
(13 before the point, 40 after), and 20 more keep totals of up to 10**20 calls exact, more
than a JetStream stream's 64-bit sequence can number."""


def exact_money() -> AbstractContextManager[Context]:
    """The decimal context for money arithmetic: ``with exact_money(): total += cost``."""
    return localcontext(prec=MONEY_PRECISION)


def decimal_string_pattern(limit: int, places: int) -> str:
    """The decimal strings from 0 to ``limit`` (a power of ten) with at most ``places``
    digits after the point, as ``str(Decimal)`` writes them: plain digits (``0.0125``), or
    scientific below 10**-6 (``1.5E-7``), for a zero with an exponent (``0E-8``) and for an
    exponent above zero (``1E+3``). No sign, space, underscore, lower-case ``e`` or leading
    zero: the contract's wire form, which every producer can write and every consumer reads
    exactly (the Python models also read laxer spellings)."""
    digits = len(str(limit)) - 1
    plain = rf"(0|[1-9][0-9]{{0,{digits - 1}}})(\.[0-9]{{1,{places}}})?|{limit}(\.0{{1,{places}}})?"
    small = [  # n: the exponent; the digits after the point are the mantissa's plus n
        rf"[1-9](\.[0-9]{{1,{places - n}}})?E-{n}" if n < places else rf"[1-9]E-{n}"
        for n in range(7, places + 1)
    ]
    large = [rf"[1-9](\.[0-9]{{1,{n}}})?E\+{n}" for n in range(1, digits)]
    written = len(str(MAX_WRITTEN_PLACES)) - 1  # a power of ten
    zero = rf"0E\+[0-9]+|0E-([0-9]{{1,{written}}}|{MAX_WRITTEN_PLACES})"
    return "^(" + "|".join([plain, *small, zero, *large, rf"1(\.0+)?E\+{digits}"]) + ")$"


def exact_decimal(limit: int) -> WithJsonSchema:
    """What producers are held to in the JSON Schema: a decimal string or a JSON integer,
    never a JSON fraction (a binary float on the way, so not the amount meant)."""
    pattern = decimal_string_pattern(limit, MAX_DECIMAL_PLACES)
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": limit},
                {"type": "string", "pattern": pattern},
            ]
        },
        mode="validation",
    )


def _written_places(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_WRITTEN_PLACES:
        raise ValueError(
            f"at most {MAX_WRITTEN_PLACES} digits after the point as written, trailing zeros"
            " included"
        )
    return value


WrittenPlaces = AfterValidator(_written_places)
"""The bound ``MAX_WRITTEN_PLACES`` on a decimal field (after its other rules)."""

Count = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Seconds = Annotated[
    Decimal,
    Field(ge=0, le=MAX_AUDIO_SECONDS, decimal_places=MAX_DECIMAL_PLACES),
    WrittenPlaces,
    exact_decimal(MAX_AUDIO_SECONDS),
]
Usd = Annotated[
    Decimal,
    Field(ge=0, le=MAX_COST, decimal_places=MAX_DECIMAL_PLACES),
    WrittenPlaces,
    exact_decimal(MAX_COST),
]
CallKind = Literal["chat", "embedding", "image", "audio"]
Rate = Annotated[
    Decimal,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?(E[-+]?[0-9]+)?$"},
            ]
        },
        mode="validation",
    ),
]
"""A rate: any finite decimal, as a JSON number or a decimal string (the schema said any
string, so a producer's ``"2.5/M"`` or ``"NaN"`` passed it and was dead-lettered)."""


class ImageUsage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    count: Annotated[int, Field(ge=1, le=MAX_IMAGES)]
    size: str = Field(description='e.g. "1024x1024"', max_length=32)
    quality: str = Field(default="standard", max_length=32)


class Usage(BaseModel):
    """Usage as classes that never overlap, so no token is priced twice.

    Input is split into uncached, cache-read and cache-write; output into visible text and
    reasoning (reasoning is output, counted once). Convert from SDK shapes with
    ``budget.usage`` rather than filling these by hand.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_uncached: Count = 0
    input_cache_read: Count = 0
    input_cache_write: Count = 0
    output_text: Count = 0
    output_reasoning: Count = 0
    embedding_tokens: Count = 0
    audio_seconds: Seconds = Field(
        default=Decimal(0),
        description="0 to 10**9 (MAX_AUDIO_SECONDS), at most 40 decimal places, as a decimal"
        " string or a JSON integer",
    )
    images: ImageUsage | None = None

    @property
    def input_tokens(self) -> int:
        """All input tokens, cached or not (the seed's ``input_tokens``)."""
        return self.input_uncached + self.input_cache_read + self.input_cache_write

    @property
    def output_tokens(self) -> int:
        return self.output_text + self.output_reasoning

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.embedding_tokens


class PriceSource(BaseModel):
    """Where a cost came from, so a later price-data update never rewrites history."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: Literal["override", "supplement", "genai-prices"]
    data_version: str
    effective_from: date | None = None
    rates: dict[str, Rate] = Field(
        default_factory=dict, description="USD per unit used, keyed by usage class"
    )


_PRICED_OR_EXPLAINED: JsonDict = {
    "oneOf": [
        {
            "required": ["cost"],
            "properties": {"cost": {"not": {"type": "null"}}, "unpriced_reason": {"type": "null"}},
        },
        {
            "required": ["unpriced_reason"],
            "properties": {
                "cost": {"type": "null"},
                "unpriced_reason": {"type": "string", "minLength": 1},
            },
        },
    ]
}
"""The cost rule as JSON Schema: a cost, or no cost and a reason why, never both (the
model reads a priced event that also carries a reason; no producer writes one)."""


class _Cost(BaseModel):
    """The cost fields both usage events carry, with the rule that binds them."""

    model_config = ConfigDict(json_schema_extra=_PRICED_OR_EXPLAINED)

    cost: Usd | None = Field(
        default=None,
        description="USD, exact: 0 to 10**12 (MAX_COST), at most 40 decimal places, as a"
        " decimal string or a JSON integer; absent or null when the model has no price (then"
        " unpriced_reason says why)",
    )
    currency: Literal["USD"] = "USD"
    price: PriceSource | None = None
    unpriced_reason: str | None = None

    @model_validator(mode="after")
    def _priced_or_explained(self) -> Self:
        if self.cost is None and not self.unpriced_reason:
            raise ValueError("an unpriced event must say why (unpriced_reason)")
        return self


class UsageRecorded(_Cost, Event):
    """A provider call happened and consumed ``usage``; ``cost`` is null when unpriced."""

    SCHEMA_VERSION: ClassVar[int] = 2
    SUBJECT: ClassVar[str] = "usage.recorded"
    BY_PUBLISHER: ClassVar[bool] = True

    type: Literal["UsageRecorded"] = "UsageRecorded"
    schema_version: Literal[2] = 2
    provider: str = Field(min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=NAME_MAX)
    kind: CallKind = "chat"
    usage: Usage
    user_id: str | None = Field(default=None, max_length=NAME_MAX)
    project_id: str | None = Field(default=None, max_length=NAME_MAX)
    tags: dict[str, str] = Field(default_factory=dict)
    reservation_id: str | None = Field(
        default=None, max_length=100, description="the check's reservation this call settles"
    )
    estimated_reason: str | None = Field(
        default=None,
        max_length=500,
        description="set when usage (and so cost) is the pre-call estimate, not the"
        " provider's count: why",
    )


class UsageRepriced(_Cost, Event):
    """A correction appended by ``budget reprice``: the cost of the usage event
    ``corrects``, recomputed after a price fix. Old events are never edited.

    ``occurred_at``, ``provider``, ``model``, ``user_id`` and ``project_id`` repeat the
    corrected event's for readers of the log; projections book the correction in the
    periods and scopes where they recorded the corrected event.
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    SUBJECT: ClassVar[str] = "usage.repriced"
    REPEATS_OCCURRED_AT: ClassVar[bool] = True

    type: Literal["UsageRepriced"] = "UsageRepriced"
    schema_version: Literal[1] = 1
    corrects: uuid.UUID
    provider: str = Field(min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=NAME_MAX)
    user_id: str | None = Field(default=None, max_length=NAME_MAX)
    project_id: str | None = Field(default=None, max_length=NAME_MAX)
    reason: str = Field(max_length=500)
