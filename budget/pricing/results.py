"""What pricing one call returns: a cost with its source, or an explicit "unpriced"."""

from __future__ import annotations

from decimal import Decimal

from events.usage import PriceSource

__all__ = ["Priced", "Unpriced", "UnpricedModelError"]


class Priced:
    """A cost in USD (exact ``Decimal``) and where its price came from."""

    __slots__ = ("cost", "source")

    cost: Decimal
    source: PriceSource

    def __init__(self, cost: Decimal, source: PriceSource) -> None:
        self.cost = cost
        self.source = source

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Priced):
            return NotImplemented
        return self.cost == other.cost and self.source == other.source

    def __hash__(self) -> int:
        return hash(self.cost)

    def __repr__(self) -> str:
        return f"Priced(cost={self.cost!r}, source={self.source!r})"


class Unpriced:
    """No layer has a price for this call; ``reason`` says which model and why. Never $0."""

    __slots__ = ("reason",)

    reason: str

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Unpriced):
            return NotImplemented
        return self.reason == other.reason

    def __hash__(self) -> int:
        return hash(self.reason)

    def __repr__(self) -> str:
        return f"Unpriced(reason={self.reason!r})"


class UnpricedModelError(LookupError):
    """Raised by the ``calculate_*`` helpers when a call cannot be priced."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
