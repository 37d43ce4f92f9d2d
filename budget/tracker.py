"""``UsageTracker``: the host app's entry point for recording usage (seed API).

``record_usage`` prices the call at its own time, publishes an immutable ``UsageRecorded``
event and returns it. Publishing is pipelined and spooled locally when NATS is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from budget.config import Settings, load_settings
from budget.pricing import Priced, PricingRegistry, get_pricing_registry
from budget.publisher import EventPublisher, PublisherConfig
from budget.usage import normalize_usage, usage_from_response
from events import CallKind, ImageUsage, Producer, Usage, UsageRecorded, utc_now

__all__ = ["UsageTracker", "get_usage_tracker"]

log = logging.getLogger(__name__)


class UsageTracker:
    def __init__(
        self, settings: Settings, registry: PricingRegistry, publisher: EventPublisher
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.publisher = publisher
        self._producer = Producer(service=settings.service_name)
        self._warned_unpriced: set[tuple[str, str]] = set()

    async def record_usage(
        self,
        *,
        model: str,
        provider: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        embedding_tokens: int = 0,
        audio_seconds: int | float | Decimal | str = 0,
        images: ImageUsage | Mapping[str, Any] | None = None,
        usage: object | None = None,
        kind: CallKind | None = None,
        user_id: str | None = None,
        project_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        occurred_at: datetime | None = None,
        reservation_id: str | None = None,
    ) -> UsageRecorded:
        """Record one provider call and return the event with its cost.

        Counts follow the seed: ``input_tokens`` includes ``cached_tokens`` and
        ``cache_write_tokens``; ``reasoning_tokens`` are part of ``output_tokens``. Or pass
        the SDK's raw ``usage`` object (OpenAI, Anthropic, Google) instead of counts.
        Inconsistent counts raise ``ValueError``. A model without a price is recorded
        unpriced (cost ``None``), never as $0.
        """
        if usage is not None:
            normalized = usage_from_response(usage)
        else:
            normalized = normalize_usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_tokens=cached_tokens,
                cache_write_tokens=cache_write_tokens,
                reasoning_tokens=reasoning_tokens,
                embedding_tokens=embedding_tokens,
                audio_seconds=audio_seconds,
                images=images,
            )
        at = occurred_at or utc_now()
        priced = self.registry.price(provider=provider, model=model, usage=normalized, at=at)
        if isinstance(priced, Priced):
            cost, source, reason = priced.cost, priced.source, None
        else:
            cost, source, reason = None, None, priced.reason
            if (provider, model) not in self._warned_unpriced:
                self._warned_unpriced.add((provider, model))
                log.warning("recording usage of %s/%s unpriced: %s", provider, model, reason)
        event = UsageRecorded(
            occurred_at=at,
            producer=self._producer,
            provider=provider,
            model=model,
            kind=kind or _infer_kind(normalized),
            usage=normalized,
            cost=cost,
            price=source,
            unpriced_reason=reason,
            user_id=user_id,
            project_id=project_id,
            tags=dict(tags or {}),
            reservation_id=reservation_id,
        )
        await self.publisher.publish(event)
        return event

    async def flush(self) -> None:
        """Wait until everything recorded so far is stored in JetStream or the spool."""
        await self.publisher.flush()

    async def close(self) -> None:
        await self.publisher.close()


def _infer_kind(usage: Usage) -> CallKind:
    if usage.images is not None:
        return "image"
    if usage.embedding_tokens:
        return "embedding"
    if usage.audio_seconds and not usage.input_tokens:
        return "audio"
    return "chat"


_tracker: UsageTracker | None = None
_lock = asyncio.Lock()


async def get_usage_tracker(settings: Settings | None = None) -> UsageTracker:
    """The process's tracker, connected on first use (settings from config.yaml and
    ``BUDGET_*`` variables unless given)."""
    global _tracker
    async with _lock:
        if _tracker is None:
            settings = settings or load_settings()
            publisher = EventPublisher(PublisherConfig.from_settings(settings))
            await publisher.start()
            registry = await get_pricing_registry(settings.price_overrides)
            _tracker = UsageTracker(settings, registry, publisher)
        return _tracker
