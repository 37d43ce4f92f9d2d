"""``budget.enabled: false``: the host app's tracker becomes a no-op. Checks allow every
call, usage is priced and returned but published nowhere, and nothing connects to NATS or
creates a file; the manager, alert engine and report generator built on that tracker raise
``TrackingDisabled`` instead of reaching the system."""

from __future__ import annotations

from nats.aio.client import Client

from events import Event

__all__ = ["DISABLED_REASON", "DisabledPublisher", "TrackingDisabled"]

DISABLED_REASON = "budget tracking is disabled (budget.enabled: false)"


class TrackingDisabled(RuntimeError):
    """The tracker was made with ``budget.enabled: false``: there is no system to reach."""


class DisabledPublisher:
    """Stands in for ``EventPublisher``: drops every event, never connects."""

    connected = False
    stored_up_to = 0  # it stores nothing

    def __init__(self) -> None:
        self.on_connect: list[object] = []

    @property
    def client(self) -> Client | None:
        raise TrackingDisabled(f"{DISABLED_REASON}; set it to true to manage budgets")

    async def start(self) -> None:
        pass

    async def publish(self, event: Event) -> None:
        pass

    def offer(self, event: Event) -> bool:
        return True

    async def flush(self, within: float | None = None) -> None:
        pass

    async def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass
