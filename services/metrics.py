"""The services' Prometheus metrics, and the /metrics endpoint each service process serves.

Every long-running ``budget`` command (a worker, the enforcer, the notifier, the query
service, the api) serves its own process's metrics on ``metrics_host:metrics_port`` when
``metrics_port`` is set; ``budget up`` gives each process its own port. The endpoint
answers only requests bearing the metrics token (``services.metrics_endpoint``) and is
bound to 127.0.0.1 unless configured otherwise; labels are closed sets (no user, amount or
path), so a reader learns volumes and health, not who spends what (docs/security.md,
Metrics). The engine's metrics are in ``projections.engine.metrics``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram

from budget.config import Settings
from budget.waits import wait_set
from services.metrics_endpoint import metrics_token, start_metrics_server

__all__ = [
    "ALERT_DELIVERIES",
    "CHECKS",
    "CHECK_OUTCOMES",
    "CHECK_SECONDS",
    "DELIVERY_OUTCOMES",
    "HTTP_REQUEST_SECONDS",
    "QUERY_SECONDS",
    "RESERVATIONS_OPEN",
    "refresh_every",
    "serve_metrics",
]

log = logging.getLogger(__name__)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_SLOW = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CHECK_OUTCOMES = ("allowed", "block", "throttle", "error", "rate_limited", "invalid")
DELIVERY_OUTCOMES = ("sent", "failed", "skipped", "retried")

# The enforcer's: registered by ``services.enforcer`` alone, so no other process exports
# them as zeros (a sum or max over every process would read those).
CHECKS = Counter(
    "budget_checks",
    "Pre-call checks the enforcer answered, by outcome (CHECK_OUTCOMES): allowed, block,"
    " throttle, error (deciding failed, or the enforcer is not healthy), rate_limited"
    " (refused for the caller's limits, unread), invalid (not a check request)",
    ["outcome"],
    registry=None,
)
CHECK_SECONDS = Histogram(
    "budget_check_seconds",
    "Seconds from a check's arrival at the enforcer to its answer (queueing included)",
    buckets=_FAST,
    registry=None,
)
RESERVATIONS_OPEN = Gauge(
    "budget_reservations_open",
    "Reservations (pre-call holds) neither settled by usage, released nor expired, in the"
    " whole database: every enforcer replica reports the same count (read it with max)",
    registry=None,
)
ALERT_DELIVERIES = Counter(
    "budget_alert_deliveries",
    "Alert sends the notifier finished or tried, by channel and outcome (DELIVERY_OUTCOMES):"
    " sent, failed (given up), skipped (channel not enabled), retried",
    ["channel", "outcome"],
)
QUERY_SECONDS = Histogram(
    "budget_query_seconds",
    "Seconds the query service took to answer a request, by query",
    ["query"],
    buckets=_SLOW,
)
HTTP_REQUEST_SECONDS = Histogram(
    "budget_http_request_seconds",
    "Seconds the api took to answer an HTTP request, by method, handler (the route's"
    " name) and status",
    ["method", "handler", "status"],
    buckets=_SLOW,
)


def serve_metrics(settings: Settings, service: str) -> WSGIServer | None:
    """Serve this process's metrics on http://metrics_host:metrics_port/metrics to
    scrapers bearing the metrics token (from a thread, so a busy event loop still
    answers), if ``metrics_port`` is set; the server. A port that is taken or a token that
    cannot be read raises: a service whose metrics nobody could scrape should not start."""
    if settings.metrics_port is None:
        return None
    server = start_metrics_server(
        host=settings.metrics_host, port=settings.metrics_port, token=metrics_token(settings)
    )
    log.info(
        "%s metrics on http://%s:%d/metrics (bearer token required)",
        service,
        settings.metrics_host,
        settings.metrics_port,
    )
    return server


async def refresh_every(
    seconds: float, refresh: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Call ``refresh`` (it sets a gauge) every ``seconds`` until ``stop``; a failure is
    logged and the next round tries again, so the gauge keeps its last known value."""
    while not stop.is_set():
        try:
            await refresh()
        except Exception as exc:
            log.debug("metrics refresh failed: %s", exc)
        await wait_set(stop, seconds)
