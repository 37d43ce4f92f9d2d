"""Realistic demo data, written through the HTTP API as a host app and an admin would:
budget policies, a few hundred calls over the last 30 days (six providers, five users,
four projects, and a model without a price), and the alerts that spend raises.

Used by ``scripts/screenshots.py``; deterministic for a given day (seeded random).
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

__all__ = ["POLICIES", "seed", "tend_alerts", "wait_applied", "wait_feed_quiet"]

POLICIES: list[dict[str, Any]] = [
    {
        "policy_id": "global-daily",
        "name": "Daily spend cap",
        "period": "daily",
        "limit_amount": "6",
        "soft_limit_percent": "70",
    },
    {
        "policy_id": "openai-weekly",
        "name": "OpenAI weekly",
        "scope": "provider",
        "scope_key": "openai",
        "period": "weekly",
        "limit_amount": "25",
        "action": "notify",
    },
    {
        "policy_id": "research-monthly",
        "name": "Research project",
        "scope": "project",
        "scope_key": "research",
        "limit_amount": "15",
        "action": "block",
        "timezone": "Europe/Berlin",
    },
    {
        "policy_id": "alice-monthly",
        "name": "Alice's allowance",
        "scope": "user",
        "scope_key": "alice",
        "limit_amount": "5",
        "action": "throttle",
    },
]
# provider, model, weight, input tokens range, output tokens range
MODELS = [
    ("openai", "gpt-4o", 22, (20_000, 180_000), (800, 6_000)),
    ("openai", "gpt-4o-mini", 20, (10_000, 150_000), (500, 5_000)),
    ("anthropic", "claude-sonnet-4-20250514", 22, (20_000, 160_000), (800, 8_000)),
    ("anthropic", "claude-3-5-haiku-20241022", 10, (8_000, 80_000), (300, 4_000)),
    ("google", "gemini-2.0-flash", 12, (20_000, 400_000), (500, 6_000)),
    ("mistral", "mistral-large-latest", 8, (10_000, 100_000), (500, 5_000)),
    ("acme", "acme-reasoner-preview", 3, (5_000, 40_000), (1_000, 9_000)),  # no price known
]
USERS = {"alice": 2, "bob": 3, "carol": 3, "dave": 2, "erin": 1}
PROJECTS = {"search": 4, "support-bot": 3, "research": 2, "summaries": 2}
FEED_LOOK_BACK = 5.0
"""Seconds of past deliveries ``GET /api/v1/alerts/stream`` sends a client on connecting."""


def seed(http: httpx.Client, *, days: int = 30) -> int:
    """Create the policies and record the calls; the number of calls recorded."""
    # A month of demo traffic is too sparse for the hourly anomaly baseline: every busy
    # hour would look unusual and drown the threshold alerts.
    http.delete("/api/v1/rules/default-anomaly")
    for policy in POLICIES:
        http.put(f"/api/v1/policies/{policy['policy_id']}", json=policy).raise_for_status()
    now = datetime.now(UTC)
    rng = random.Random(now.date().toordinal())
    count = 0
    for back in range(days - 1, -1, -1):
        day = (now - timedelta(days=back)).replace(hour=0, minute=0, second=0, microsecond=0)
        weekend = day.weekday() >= 5
        calls = int((14 + (days - back) * 0.4) * (0.45 if weekend else 1) + rng.randint(0, 8))
        for _ in range(calls):
            at = day + timedelta(seconds=rng.randint(7 * 3600, 22 * 3600))
            if at >= now:
                continue
            http.post("/api/v1/usage", json=_call(rng, at)).raise_for_status()
            count += 1
    return count


def _call(rng: random.Random, at: datetime) -> dict[str, Any]:
    provider, model, _, inputs, outputs = rng.choices(MODELS, [m[2] for m in MODELS])[0]
    input_tokens = rng.randint(*inputs)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "provider": provider,
        "model": model,
        "input_tokens": input_tokens,
        "cached_tokens": rng.choice((0, 0, input_tokens // 3)),
        "output_tokens": rng.randint(*outputs),
        "user_id": rng.choices(list(USERS), list(USERS.values()))[0],
        "project_id": rng.choices(list(PROJECTS), list(PROJECTS.values()))[0],
        "occurred_at": at.isoformat(),
    }


def wait_applied(http: httpx.Client, within: float = 60) -> None:
    """Until every projection has applied every event in the log, and the notifier has
    sent every alert (else the dashboard would pop them up as they went out)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = http.get("/api/v1/projections").json()
        if status and all(p["lag"] == 0 for p in status) and not _undelivered(http):
            return
        time.sleep(0.5)
    raise TimeoutError(f"projections or alerts still pending after {within}s")


def _deliveries(http: httpx.Client) -> list[dict[str, Any]]:
    ids = [a["alert"]["alert_id"] for a in http.get("/api/v1/alerts").json()["alerts"]]
    return [d for i in ids for d in http.get(f"/api/v1/alerts/{i}").json()["deliveries"]]


def _undelivered(http: httpx.Client) -> bool:
    return any(d["status"] == "pending" for d in _deliveries(http))


def wait_feed_quiet(http: httpx.Client, quiet: float = FEED_LOOK_BACK + 1) -> None:
    """Until the newest alert delivery is ``quiet`` seconds old: the live feed also sends
    a client that just connected what it delivered in the seconds before."""
    sent = [datetime.fromisoformat(d["sent_at"]) for d in _deliveries(http) if d["sent_at"]]
    if sent:
        while (datetime.now(UTC) - max(sent)).total_seconds() < quiet:
            time.sleep(0.2)


def tend_alerts(http: httpx.Client) -> None:
    """Acknowledge the oldest alert and resolve the next, as an admin would have."""
    alerts = http.get("/api/v1/alerts").json()["alerts"]
    for stored, verb in zip(alerts, ("acknowledge", "resolve"), strict=False):
        alert_id = stored["alert"]["alert_id"]
        http.post(f"/api/v1/alerts/{alert_id}/{verb}").raise_for_status()
