"""An optional Prometheus exporter for a host app's producer (its ``UsageTracker``).

A host app that already serves Prometheus metrics adds the tracker's with one call::

    from budget.metrics import export_tracker_metrics
    export_tracker_metrics(tracker)          # into prometheus_client's default registry

``budget_spool_depth`` counts the events waiting in the local spool because NATS did not
acknowledge them (re-sent every ``flush_interval`` and after a reconnect); one that grows
means usage is not reaching the projections. ``budget_producer_connected`` is 1 while the
tracker is connected to NATS. Both are read when scraped, nothing is counted per call.
A spool that cannot be read (a file that is no SQLite database, one this process may not
read) leaves the depth out, logged once, rather than failing the whole scrape, which
would take every other metric of the host app with it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from budget.publisher import EventPublisher
from budget.tracker import UsageTracker

__all__ = ["TrackerCollector", "export_tracker_metrics"]

log = logging.getLogger(__name__)


class TrackerCollector(Collector):
    """The metrics of one tracker, read at each scrape. ``service`` labels them (the
    tracker's ``service_name``), so several trackers may share a registry."""

    def __init__(self, tracker: UsageTracker) -> None:
        self._tracker = tracker
        self._service = tracker.settings.service_name
        self._unreadable: set[str] = set()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        publisher = self._tracker.publisher
        depth = GaugeMetricFamily(
            "budget_spool_depth",
            "Events in the producer's local spool, not yet acknowledged by NATS",
            labels=["service"],
        )
        connected = GaugeMetricFamily(
            "budget_producer_connected",
            "1 while the producer is connected to NATS",
            labels=["service"],
        )
        spooled = self._spool_depth(publisher) if isinstance(publisher, EventPublisher) else 0
        if spooled is not None:
            depth.add_metric([self._service], spooled)
        connected.add_metric([self._service], 1 if publisher.connected else 0)
        yield depth
        yield connected

    def _spool_depth(self, publisher: EventPublisher) -> int | None:
        """The spool's depth; None, logged once for each failure, when it cannot be read."""
        try:
            return _spool_depth(publisher)
        except (sqlite3.Error, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            if why not in self._unreadable:
                self._unreadable.add(why)
                log.warning(
                    "budget_spool_depth left out: the spool %s cannot be read (%s)",
                    publisher.spool.path,
                    why,
                )
            return None


def _spool_depth(publisher: EventPublisher) -> int:
    # Its own read-only connection: the scrape runs on another thread than the publisher,
    # and WAL lets it read while the publisher writes.
    if not publisher.spool.path.exists():
        return 0  # nothing spooled yet: the spool is made when first needed
    uri = f"{publisher.spool.path.as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        return int(db.execute("SELECT count(*) FROM spool").fetchone()[0])


def export_tracker_metrics(
    tracker: UsageTracker, registry: CollectorRegistry = REGISTRY
) -> TrackerCollector:
    """Register ``tracker``'s metrics in ``registry``; returns the collector (unregister it
    when the tracker closes)."""
    collector = TrackerCollector(tracker)
    registry.register(collector)
    return collector
