"""``budget worker NAME``: the consumer of one projection or of a group of them, as a
FastStream service.

FastStream gives the process its structure (connection, signals, graceful shutdown,
logging); the batches are read with ``projections.reader.PullReader`` on the broker's
nats-py connection, because FastStream's batch subscriber reads ~20k msg/s while a
rebuild must read faster than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import psycopg
from faststream import FastStream
from faststream.nats import NatsBroker, NatsSecurity, NatsUserPassword
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from budget.config import Settings
from budget.natsconn import nats_options
from budget.pricing import genai
from budget.server_urls import nats_servers
from budget.waits import wait_set
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.log import require_stream
from projections.engine.metrics import BATCH_SECONDS, EVENTS_APPLIED, LAG
from projections.engine.projection import Projection
from projections.engine.reader import ConsumerGone
from projections.engine.rebuild import rebuild_if_reshaped
from projections.engine.runner import (
    BatchResult,
    EngineConfig,
    ProjectionRunner,
    Reconnected,
    Retired,
    Systemic,
)
from projections.engine.shapes import live_shape_is_current
from projections.registry import worker_projections
from services.liveness import Liveness, Loop, heartbeat
from services.metrics import refresh_every, serve_metrics
from services.ports import require_metrics_port

__all__ = [
    "ServiceBody",
    "broker_options",
    "run_projection",
    "run_service",
    "run_worker",
    "tune_gc",
]

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0
WORKER_STALL_AFTER = 300.0
"""Seconds one batch may take, or a worker may keep failing and backing off (its database
or NATS unreachable), before it counts as stalled (unhealthy)."""
LAG_EVERY = 5.0
"""Seconds between two readings of a worker's lag (one NATS request each)."""


async def run_projection(
    name: str, nc: Client, settings: Settings, stop: asyncio.Event, loop: Loop | None = None
) -> None:
    """Run the active versions of worker ``name``'s projections (a group's, or one) until
    ``stop``; follow a swap to a new version; ride out NATS or PostgreSQL outages with
    backoff. Each batch is a turn of ``loop``, if given (a batch stuck longer than its
    ``stall_after`` is a stall), and an outage counts as the loop failing until a batch
    commits or nothing is left to apply (one outlasting ``stall_after`` is a stall too)."""
    watch = loop.turn if loop is not None else contextlib.nullcontext
    projections = worker_projections(name)
    members = [(p.name, name) for p in projections]
    batch_seconds = [BATCH_SECONDS.labels(*labels) for labels in members]
    events_applied = {labels[0]: EVENTS_APPLIED.labels(*labels) for labels in members}
    await require_stream(nc.jetstream(), settings.topology.event_stream)
    backoff = 1.0
    applied = 0

    @contextlib.contextmanager
    def turn() -> Iterator[None]:
        started = time.perf_counter()
        try:
            with watch():
                yield
        finally:
            took = time.perf_counter() - started
            for histogram in batch_seconds:
                histogram.observe(took)

    def count(result: BatchResult) -> None:
        nonlocal applied, backoff
        applied += result.applied
        for projection, events in result.applied_by.items():
            events_applied[projection].inc(events)
        backoff = 1.0

    config = EngineConfig(time_bounds=settings.time_bounds)
    lone_faults = _LoneFaults()
    while not stop.is_set():
        runner = ProjectionRunner(
            projections,
            nc=nc,
            database_url=settings.database_url,
            topology=settings.topology,
            config=config,
        )
        lag = asyncio.create_task(refresh_every(LAG_EVERY, _lag_of(members, runner), stop))
        try:
            # A hot standby waits in PostgreSQL for the reshape lock (while another worker
            # rebuilds) and for the writer lock: a stop must reach it in either wait.
            reshaped = _rebuild_reshaped(projections, nc, settings, config, count, turn)
            if not await _unless_stopped(reshaped, stop):
                break
            if not await _unless_stopped(runner.open(), stop):
                break
            log.info(
                "worker %s running %s",
                name,
                ", ".join(f"{w.projection.name} v{w.version}" for w in runner.writers),
            )
            if loop is not None and await runner.pending() == 0:
                loop.recovered()  # waiting for events; otherwise the next batch tells
            await runner.run(stop, on_batch=count, turn=turn)
        except (Retired, ConsumerGone) as exc:
            log.info("worker %s: %s; moving to the live version", name, exc)
        except Reconnected as exc:
            log.warning("worker %s: %s", name, exc)
        except (psycopg.OperationalError, NatsError, OSError, TimeoutError, Systemic) as exc:
            config = lone_faults.after(exc, config)
            log.warning("worker %s: %s; retrying in %.0fs", name, exc, backoff)
            if loop is not None:
                loop.failing(f"{type(exc).__name__}: {exc}")
            await _sleep_unless(stop, backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            lag.cancel()
            await runner.close()
    log.info("worker %s stopped after applying %d events", name, applied)


async def _rebuild_reshaped(
    projections: list[Projection],
    nc: Client,
    settings: Settings,
    config: EngineConfig,
    on_batch: Callable[[BatchResult], None],
    turn: Callable[[], contextlib.AbstractContextManager[None]],
) -> None:
    """Rebuild those of ``projections`` whose live tables another release built
    (``rebuild_if_reshaped``), one after another; meanwhile run the others at their live
    versions, so an upgrade that reshapes one member of a group (the history) does not stop
    the rest (spend, which checks count on) for as long as its rebuild reads the log."""
    async with await connect(settings.database_url) as conn:
        stale = [p for p in projections if not await _current(conn, p)]
    if not stale:
        return
    current = [p for p in projections if p not in stale]
    serving = asyncio.Event()
    meanwhile = (
        asyncio.create_task(_run_meanwhile(current, nc, settings, config, serving, on_batch, turn))
        if current
        else None
    )
    try:
        for projection in stale:
            await rebuild_if_reshaped(
                projection,
                nc=nc,
                database_url=settings.database_url,
                topology=settings.topology,
                config=config,
            )
    finally:
        serving.set()
        if meanwhile is not None:
            await meanwhile


async def _current(conn: psycopg.AsyncConnection[Any], projection: Projection) -> bool:
    await ensure_projection(conn, projection)  # a new projection's first version is current
    return await live_shape_is_current(conn, projection)


async def _run_meanwhile(
    projections: list[Projection],
    nc: Client,
    settings: Settings,
    config: EngineConfig,
    until: asyncio.Event,
    on_batch: Callable[[BatchResult], None],
    turn: Callable[[], contextlib.AbstractContextManager[None]],
) -> None:
    """Run ``projections`` at their live versions until ``until`` is set, then delete the
    consumer they read with (the worker's own consumer takes over from their checkpoints).
    A failure ends this early, saying so: the worker runs them again once the rebuilds are
    done."""
    runner = ProjectionRunner(
        projections,
        nc=nc,
        database_url=settings.database_url,
        topology=settings.topology,
        config=config,
    )
    try:
        await runner.open()
        log.info(
            "running %s while the others are rebuilt",
            ", ".join(f"{w.projection.name} v{w.version}" for w in runner.writers),
        )
        await runner.run(until, on_batch=on_batch, turn=turn)
    except Exception as exc:
        log.warning("stopped running the others during the rebuild: %s", exc)
    finally:
        await runner.close()
        if runner.writers:
            with contextlib.suppress(NatsError, NotFoundError):
                await nc.jetstream().delete_consumer(
                    settings.topology.event_stream.name, runner.durable
                )


LONE_FAULT_PATIENCE = 120.0
"""Seconds an event alone in its batch may fail, with no event after it to tell whether
the fault is the projection's or its own, before it is taken for its own and
dead-lettered: a quiet log (policies, rules) could otherwise stall on it for days."""


class _LoneFaults:
    """How long the same lone event has failed, across the worker's retries."""

    def __init__(self) -> None:
        self._since: tuple[int, float] | None = None

    def after(self, exc: Exception, config: EngineConfig) -> EngineConfig:
        """``config`` for the next try: the lone event's fault taken for its own once it
        has stood ``LONE_FAULT_PATIENCE``."""
        lone = exc.lone if isinstance(exc, Systemic) else None
        if lone is None:
            return config
        now = time.monotonic()
        if self._since is None or self._since[0] != lone:
            self._since = (lone, now)
        elif now - self._since[1] >= LONE_FAULT_PATIENCE:
            log.error(
                "event at stream sequence %d has failed alone for %.0f s with nothing after"
                " it; taking the fault for its own and dead-lettering it",
                lone,
                now - self._since[1],
            )
            return dataclasses.replace(config, lone_fault_its_own=lone)
        return config


def _lag_of(
    members: list[tuple[str, str]], runner: ProjectionRunner
) -> Callable[[], Awaitable[None]]:
    """Sets the lag gauge of each (projection, worker) of ``members`` to what ``runner``'s
    consumer, which they share, has not acked, once it is open."""
    gauges = [LAG.labels(*labels) for labels in members]

    async def measure() -> None:
        if runner.reader is not None:
            pending = await runner.pending()
            for gauge in gauges:
                gauge.set(pending)

    return measure


def tune_gc(*, prices: bool = True) -> None:
    """Collect garbage for throughput. A consumer holds thousands of decoded events between
    batches; at CPython's default threshold (700 allocations) the collector ran every few
    events and rescanned them, doubling the cost of validating one (26 vs 13 µs measured
    in a rebuild). Young objects are now collected every 50,000 allocations, and what
    start-up created is never rescanned.

    With ``prices``, start-up includes loading genai-prices' data (~24,000 objects), which
    keying a provider and pricing need: loaded by the first event that needed it instead, it
    stalled that batch for 0.5-1 s (a lag spike for every event behind it) and stayed among
    the objects each full collection rescans."""
    if prices:
        genai.snapshot()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """True once ``work`` is done; False, ``work`` cancelled, if ``stop`` is set first: a
    hot standby waits for its writer lock in PostgreSQL (cancelled there too), for as long
    as the active worker runs, and would not otherwise hear a SIGTERM."""
    working = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((working, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not working.done():
            working.cancel()
        await asyncio.gather(working, stopping, return_exceptions=True)
    if working.cancelled():
        return False
    working.result()  # raises what stopped it
    return True


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    await wait_set(stop, seconds)


ServiceBody = Callable[[Client, Settings, asyncio.Event, Liveness], Coroutine[Any, Any, None]]
"""``body(nc, settings, stop, liveness)``: a service's work, until ``stop`` is set; it
registers the loops it depends on with ``liveness``."""


def run_worker(name: str, settings: Settings) -> int:
    """Run worker ``name`` until SIGINT/SIGTERM; returns the exit code."""
    worker_projections(name)  # fail fast on an unknown name

    async def body(nc: Client, settings: Settings, stop: asyncio.Event, liveness: Liveness) -> None:
        loop = liveness.loop(f"worker {name}", stall_after=WORKER_STALL_AFTER)
        await loop.start(run_projection(name, nc, settings, stop, loop))

    return run_service(f"worker {name}", settings, body)


def broker_options(settings: Settings) -> dict[str, Any]:
    """``nats_options`` in FastStream's terms: credentials and TLS (its handshake first)
    go in ``security``."""
    options = nats_options(settings)
    user, password, tls, first = (
        options.pop("user", None),
        options.pop("password", None),
        options.pop("tls", None),
        options.pop("tls_handshake_first", False),
    )
    if user is not None and password is not None:
        options["security"] = NatsUserPassword(
            user, password, ssl_context=tls, tls_handshake_first=first
        )
    elif tls is not None:
        options["security"] = NatsSecurity(ssl_context=tls, tls_handshake_first=first)
    return options


def run_service(name: str, settings: Settings, body: ServiceBody, *, prices: bool = True) -> int:
    """Run ``body`` as a FastStream service until SIGINT/SIGTERM (a heartbeat file too, if
    configured); returns the process exit code. ``prices``: whether it needs the price data
    (``tune_gc``)."""
    tune_gc(prices=prices)
    require_metrics_port(settings)  # a taken port is one line naming it, not errno 98
    serve_metrics(settings, name)
    broker = NatsBroker(
        nats_servers(settings.nats_url), max_reconnect_attempts=-1, **broker_options(settings)
    )
    app = FastStream(broker)
    stop = asyncio.Event()
    liveness = Liveness()
    tasks: list[asyncio.Task[None]] = []

    def exit_on_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", name, exc_info=task.exception())
            app.exit()

    @app.after_startup
    async def start() -> None:
        main = liveness.loop(name, stall_after=float("inf"))  # its own loops watch for stalls
        task = main.start(body(broker.connection, settings, stop, liveness))
        task.add_done_callback(exit_on_failure)
        tasks.append(task)
        if settings.heartbeat_file is not None or settings.alive_file is not None:
            beating = heartbeat(settings.heartbeat_file, stop, liveness, alive=settings.alive_file)
            tasks.append(asyncio.create_task(beating))

    @app.on_shutdown
    async def shutdown() -> None:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(app.run())
    failed = any(not t.cancelled() and t.exception() is not None for t in tasks)
    return 1 if failed else 0
