"""``budget.enabled: false`` makes the host app's tracker a no-op: checks allow, nothing is
published or spooled, nothing connects (the NATS URL here has nobody listening)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

import budget.manager
import budget.tracker
from budget import get_budget_manager, get_usage_tracker
from budget.config import load_settings
from budget.disabled import TrackingDisabled
from events import BudgetPolicy


async def test_disabled_tracking_allows_records_nothing_and_never_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget.tracker, "_tracker", None)
    monkeypatch.setattr(budget.manager, "_manager", None)
    spool = tmp_path / "spool"
    config = tmp_path / "config.yaml"
    config.write_text(
        "budget:\n"
        "  enabled: false\n"
        "  nats_url: nats://127.0.0.1:1\n"
        f"  spool_dir: {spool}\n"
        "  default_action: block\n"
        "  default_limit: 0\n"
    )
    settings = load_settings(config, environ={})
    tracker = await get_usage_tracker(settings)

    check = await tracker.check_budget(model="gpt-4o", estimated_tokens=10**6, user_id="u")
    assert check.allowed and check.reservation_id is None
    assert "budget.enabled: false" in check.reason

    @tracker.track_llm_call(model="gpt-4o", user_id="u")
    async def call() -> dict[str, object]:
        return {"usage": {"prompt_tokens": 1000, "completion_tokens": 500}}

    assert await call() == {"usage": {"prompt_tokens": 1000, "completion_tokens": 500}}
    event = await tracker.record_usage(
        model="gpt-4o", provider="openai", input_tokens=1000, output_tokens=500
    )
    assert event.cost is not None and event.cost > Decimal(0)
    await tracker.flush()
    assert not spool.exists()
    assert not tracker.publisher.connected

    manager = await get_budget_manager(settings)
    with pytest.raises(TrackingDisabled, match=r"budget\.enabled: false"):
        await manager.set_policy(BudgetPolicy(name="p", limit_amount=Decimal(1)))
    await tracker.close()
