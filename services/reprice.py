"""``budget reprice``: recompute the cost of recorded usage with today's price data and
append a correction event for each one that changed. History is never edited."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from budget.pricing import Priced, PricingRegistry
from budget.pricing.rates import PRICED_APART
from budget.publisher import EventPublisher
from events import UsageRepriced
from events.usage import Usage, exact_money
from projections.queries import RecordedUsage

__all__ = [
    "Change",
    "correction_for",
    "plan_corrections",
    "publish_corrections",
    "repriceable",
]

# Correction ids derive from what they say, including the state they correct (the log
# position of the cost's last change): the same reprice run twice, or concurrently,
# appends each correction once, and a later correction back to an earlier price (B, then
# C, then B again) gets an id of its own rather than the first one's, which the ledger
# would drop as a re-send.
_NAMESPACE = uuid.UUID("6f1c1c9e-6d4b-4c51-9a55-3a1f3e2a9b10")


@dataclass(frozen=True)
class Change:
    usage: RecordedUsage
    correction: UsageRepriced

    @property
    def delta(self) -> Decimal:
        with exact_money():
            return (self.correction.cost or Decimal(0)) - (self.usage.cost or Decimal(0))


def correction_for(
    recorded: RecordedUsage, registry: PricingRegistry, reason: str
) -> UsageRepriced | None:
    """The correction for one event, or None when its price has not changed or it is not
    the price data's to say (``repriceable``)."""
    if not repriceable(recorded):
        return None
    result = registry.price(
        provider=recorded.provider,
        model=recorded.model,
        usage=recorded.usage,
        at=recorded.occurred_at,
    )
    if isinstance(result, Priced):
        cost, source, unpriced = result.cost, result.source, None
    else:
        cost, source, unpriced = None, None, result.reason
    if cost == recorded.cost:
        return None
    version = source.data_version if source else "unpriced"
    return UsageRepriced(
        event_id=uuid.uuid5(
            _NAMESPACE, f"{recorded.event_id}:{recorded.revision}:{cost}:{version}"
        ),
        occurred_at=recorded.occurred_at,
        corrects=recorded.event_id,
        provider=recorded.provider,
        model=recorded.model,
        user_id=recorded.user_id,
        project_id=recorded.project_id,
        cost=cost,
        price=source,
        unpriced_reason=unpriced,
        reason=reason,
    )


def repriceable(recorded: RecordedUsage) -> bool:
    """Whether price data can price the event from what it recorded: not a cost the host
    gave (an estimated cost is kept as given), nor an unpriced call whose usage is not in
    its counts (no usage at all, or audio or image tokens counted as text)."""
    if recorded.cost is not None:
        return recorded.from_price_data
    reason = recorded.unpriced_reason or ""
    return recorded.usage != Usage() and PRICED_APART not in reason


def plan_corrections(
    recorded: Sequence[RecordedUsage], registry: PricingRegistry, reason: str
) -> list[Change]:
    changes = []
    for usage in recorded:
        correction = correction_for(usage, registry, reason)
        if correction is not None:
            changes.append(Change(usage, correction))
    return changes


async def publish_corrections(publisher: EventPublisher, changes: Sequence[Change]) -> None:
    for change in changes:
        await publisher.publish(change.correction)
    await publisher.flush()
