"""Benchmark: the HTTP service (``budget api``, uvicorn, its own process) with 10 million
events of history, on the embedded stack that ``budget up`` runs (every worker and
service a process of its own, on one PostgreSQL and one NATS).

Set-up, before any worker starts: the (empty) event stream is recreated to start after
``--events`` sequence numbers (``first_seq``); the stack's PostgreSQL gets ``--events``
generated usage events over the 90 days before now, as ``bench/reports.py`` builds them
(its ``GENERATED`` rows into the usage history's live table, with every index its DDL
declares, and rolled up through ``ReportsProjection.roll_up``); the spend
projection's quarter-hour totals and ledger are filled from the same rows in one
statement each; history, reports and spend are checkpointed at ``--events``, so the
history pages' ``as_of`` pin includes every generated row and live events follow them
(sequence ``--events`` + 1 on). The tables are vacuumed and analysed. With
``--data-dir`` the stack keeps its data there, and a later run on the same directory
reuses it (no build).

Every request is timed by the benchmark's own minimal HTTP/1.1 client (one keep-alive
connection, one request at a time unless said), so the client's CPU on the same two
cores stays small. Figures (one JSON line each; p50/p99 over the timed requests):

- ``dashboard_p50_ms`` / ``dashboard_p99_ms``: the console's dashboard page ``/``,
  signed in (POST ``/login`` with the admin key; the session cookie kept), when the
  console is there, and ``dashboard_live_p50_ms`` / ``_p99_ms``: ``/dashboard/live``,
  which an open dashboard polls every 2 s. Always: ``dashboard_json_p50_ms`` /
  ``_p99_ms``, what the dashboard reads, through the JSON API, one request after the
  other (``DASHBOARD_READS``), and ``dashboard_json_<read>_p50_ms`` for each;
  ``spend_full_month_p50_ms``: this month's spend as asked on the last day of a month.
  Three WARN policies (global, each project, each user; limits nothing reaches) give
  the dashboard budgets to draw.
- ``history_page_p50_ms`` / ``history_page_p99_ms``: ``GET /api/v1/usage?limit=100``,
  ``at`` page 1 (a new browse each time), the pages 2 to ``--pages`` following
  ``next_cursor``, the last 50 of them (~``--pages`` deep), and ``--deep-pages`` pages
  following a cursor taken half-way into the history and one near its oldest end; each
  also with ``provider=anthropic``.
- ``export_csv_rows_per_s``: ``GET /api/v1/usage/export?format=csv`` over a since/until
  range holding ``--export-rows`` rows, read to the end; with the API process's peak RSS
  (``VmHWM``) before and after and the highest ``VmRSS`` sampled every 10 ms during it.
- ``ingest_events_per_s``: ``POST /api/v1/usage`` answered 201, per second, from
  ``--processes`` client processes with ``--in-flight`` keep-alive connections each;
  other answers and failures are counted. With ``--ingest-batch N`` (N > 1) each request
  is ``POST /api/v1/usage/batch`` with N events, and events answered are counted.
- ``healthz_p50_ms`` (no key, no database) and ``policies_p50_ms`` (a key's lookup and
  one small query): what any request costs before its own work.
- ``check_p50_ms`` / ``check_p99_ms``: ``POST /api/v1/check`` under a BLOCK policy with a
  high limit for the checking user: each answer comes from the enforcer with a
  reservation (checked), released afterwards, untimed.
- ``cpu_<phase>``: CPU per request of each process of the stack in that phase (from
  ``/proc``: the API, each worker, NATS, PostgreSQL with all its backends, the clients),
  the cores they kept busy, and ``others_cores_busy``: the rest of the machine's CPU in
  the same time (anything else running there skews the figures; before each phase the
  benchmark waits, up to ``--quiet-wait`` seconds, until that is under ``--quiet-limit``
  cores).

``--workers`` runs only some of the workers and services (the API needs ``api``,
``api_keys`` and ``policies``), to see what the API costs alone.

Run: ``./run python bench/api.py [--events 10000000] [--data-dir DIR] [--phases ...]``
(``--events 200000`` for a quick check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cpu import CpuMeter
from reports import build as build_history_and_rollups
from stack import ApiAccess, api_access, embedded_stack

from budget.config import Settings
from events import utc_now
from events.policy import GLOBAL_SCOPE_KEY
from projections.db import connect
from projections.engine.checkpoints import live_position
from projections.engine.projection import Connection
from projections.history_pages import Cursor
from projections.spend import BUCKET_SQL, MEASURES
from services.ops import nats_client
from services.stack import StackInfo

PHASES = ("dashboard", "history", "export", "check", "ingest")
# The benchmark measures what the stack can serve, not each key's limits (issue 13), which
# would cap its one key at 20 reads and 200 checks or posts a second.
UNLIMITED_CALLERS = {
    f"BUDGET_CALLER_{name}": value
    for name, value in (
        ("RATE", "1000000"),
        ("BURST", "1000000"),
        ("IN_FLIGHT", "1000"),
        ("QUERY_RATE", "1000000"),
        ("QUERY_BURST", "1000000"),
        ("QUERY_IN_FLIGHT", "1000"),
    )
}
BUILT = ("history", "reports", "spend")
CHECK_USER = "api-check"
FILTERED_PROVIDER = "anthropic"


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(
        json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}), flush=True
    )


def quantiles(samples: Sequence[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")  # within the samples
    return cuts[49], cuts[98]


# -- a minimal HTTP/1.1 client -------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    cookies: list[str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1: requests one at a time, bodies
    by Content-Length or chunked. Just enough for this benchmark, and cheap in CPU."""

    def __init__(self, port: int, headers: Mapping[str, str] | None = None) -> None:
        self.port = port
        self.headers = dict(headers or {})
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    def encode(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{k}: {v}" for k, v in {**self.headers, **(headers or {})}.items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def send(self, request: bytes) -> Reply:
        """Send an encoded request and read the reply's head (the body follows). A kept
        connection the server has closed meanwhile (uvicorn closes idle ones after 5 s)
        is replaced, and the request sent again if it had gone out on it."""
        if self._reader is not None and self._reader.at_eof():
            await self.close()
        reused = self._writer is not None
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        self._writer.write(request)
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            partial = getattr(exc, "partial", b"")
            if not reused or partial:
                raise
            await self.close()
            return await self.send(request)
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        cookies: list[str] = []
        for line in header_lines:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "set-cookie":
                cookies.append(value.split(";", 1)[0])
            headers[name] = value
        return Reply(int(status_line.split(" ", 2)[1]), headers, cookies)

    async def body(self, reply: Reply) -> AsyncIterator[bytes]:
        """The reply's body, as it arrives."""
        reader = self._reader
        assert reader is not None
        if reply.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    while await reader.readline() not in (b"\r\n", b""):
                        pass
                    break
                yield await reader.readexactly(size)
                await reader.readexactly(2)
        else:
            length = int(reply.headers.get("content-length", "0"))
            while length > 0:
                chunk = await reader.read(min(length, 1 << 20))
                if not chunk:
                    raise ConnectionError("the server closed the connection mid-body")
                length -= len(chunk)
                yield chunk
        if reply.headers.get("connection", "").lower() == "close":
            await self.close()

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        reply = await self.send(self.encode(method, target, body, headers))
        reply.body = b"".join([chunk async for chunk in self.body(reply)])
        return reply

    async def get_json(self, target: str) -> Any:
        reply = await self.request("GET", target)
        if reply.status != 200:
            raise RuntimeError(f"GET {target}: {reply.status} {reply.body[:300]!r}")
        return reply.json()


async def timed(count: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    """Milliseconds of ``count`` calls, after one untimed call (plans, caches)."""
    await call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def emit_latency(figure: str, samples: Sequence[float], **extra: object) -> None:
    p50, p99 = quantiles(samples)
    emit(f"{figure}_p50_ms", p50, "ms", requests=len(samples), **extra)
    emit(
        f"{figure}_p99_ms", p99, "ms", requests=len(samples), max_ms=round(max(samples), 2), **extra
    )


# -- per-process CPU -----------------------------------------------------------------------


class RequestMeter(CpuMeter):
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[_Box]:
        """Emit ``cpu_<name>``: µs per request per process; set ``box.requests`` (and add
        client processes' CPU seconds to ``box.extra``) inside the block."""
        box = _Box()
        with self.measure() as usage:
            yield box
        usage.cpu.update(box.extra)
        requests = max(box.requests, 1)
        emit(
            f"cpu_{name}",
            sum(usage.cpu.values()) * 1e6 / requests,
            "us/request",
            requests=box.requests,
            seconds=round(usage.seconds, 2),
            cores_busy=round(usage.cores_busy, 2),
            # Anything else on the machine (other people's tests, ...) in the same time.
            others_cores_busy=round(usage.others_cores_busy(sum(box.extra.values())), 2),
            processes={k: round(v) for k, v in usage.per_unit(requests).items()},
        )


@dataclass
class _Box:
    requests: int = 0
    extra: dict[str, float] = field(default_factory=dict)


# -- the build -----------------------------------------------------------------------------


async def build(
    nats_url: str, database_url: str, settings: Settings, *, events: int, batch: int
) -> None:
    """``events`` usage events of history, rolled up and totalled, checkpointed at
    ``events``; the event stream continues at ``events + 1``. Nothing when built already."""
    conn = await connect(database_url)
    try:
        if await live_position(conn, "history") >= events:
            print(f"# reusing the history built before ({events:,} events)", file=sys.stderr)
            return
        async with nats_client(nats_url) as nc:
            js = nc.jetstream()
            stream = settings.topology.event_stream.name
            state = (await js.stream_info(stream)).state
            if state.last_seq:
                raise SystemExit(f"the stream {stream} is not empty: build on a new data dir")
            # The stream denies purges: recreate it, empty, with the same configuration and
            # its first sequence after the generated events (no worker has bound to it yet).
            config = dataclasses.replace((await js.stream_info(stream)).config)
            config.first_seq = events + 1
            await js.delete_stream(stream)
            await js.add_stream(config)
        await build_history_and_rollups(database_url, events, batch)
        started = time.perf_counter()
        await fill_spend(conn)
        await conn.execute(
            "UPDATE projection_checkpoints c SET stream_seq = %s, events_applied = %s,"
            " message_digest = NULL,"
            " newest_event_at = (SELECT max(occurred_at) FROM usage_history), updated_at = now()"
            " FROM projection_registry r"
            " WHERE r.name = c.name AND r.active_version = c.version AND c.name = ANY(%s)",
            (events, events, list(BUILT)),
        )
        for table in ("usage_history_v1", "usage_ledger", "spend_buckets_v1"):
            await conn.execute(f"VACUUM (ANALYZE) {table}".encode())
        emit("build_spend_and_vacuum_s", time.perf_counter() - started, "s", events=events)
    finally:
        await conn.close()


async def fill_spend(conn: Connection) -> None:
    """The spend projection's totals for every history row (the reports build filled the
    usage ledger): the sums its apply path makes (same measures, same quarter hours, same
    five scopes), in one statement, stored in time order as the live projection appends
    them (a period's rows sit together on disk)."""
    names = ", ".join(name for name, _, _ in MEASURES)
    cell_sums = ", ".join(f"{aggregate} AS {n}" for n, _, aggregate in MEASURES)
    regroup = ", ".join(f"sum({n})" for n, _, _ in MEASURES)
    await conn.execute("SET work_mem = '512MB'")
    await conn.execute(
        f"""
        INSERT INTO spend_buckets_v1 (scope, scope_key, bucket_start, {names})
        SELECT scope, scope_key, bucket_start, {regroup}
        FROM (SELECT user_id, project_id, provider_key, model_key,
                     {BUCKET_SQL.format("occurred_at")} AS bucket_start, {cell_sums}
              FROM (SELECT *, NULL::jsonb AS images FROM usage_history_v1) h
              GROUP BY user_id, project_id, provider_key, model_key, bucket_start) cells
        CROSS JOIN LATERAL (VALUES ('global', '{GLOBAL_SCOPE_KEY}'), ('user', user_id),
            ('provider', provider_key), ('model', model_key), ('project', project_id))
            AS scopes(scope, scope_key)
        WHERE scope_key <> ''
        GROUP BY scope, scope_key, bucket_start
        ORDER BY bucket_start, scope, scope_key""".encode()
    )
    await conn.execute("RESET work_mem")


async def settle(database_url: str, least: float) -> None:
    """Wait ``least`` seconds, then until no checkpoint has moved for 2 seconds (the
    workers have caught up, e.g. with a previous run's events)."""
    await asyncio.sleep(least)
    conn = await connect(database_url)
    try:
        previous: list[tuple[Any, ...]] = []
        steady_since = time.monotonic()
        while time.monotonic() - steady_since < 2:
            cursor = await conn.execute(
                "SELECT name, version, stream_seq FROM projection_checkpoints ORDER BY 1, 2"
            )
            rows = await cursor.fetchall()
            if rows != previous:
                previous, steady_since = rows, time.monotonic()
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


# -- the phases ----------------------------------------------------------------------------

# What the console's dashboard reads (services/api/console/dashboard.py), through the JSON
# API: the trend and month projection for its chart, this month's and today's spend,
# the budgets (the summary report holds them), the latest calls and the open alerts.
DASHBOARD_READS = {
    "trend": "/api/v1/reports/trend?days=30",
    "projection": "/api/v1/reports/projection?days=1",
    "spend_month": "/api/v1/spend?period=monthly",
    "spend_today": "/api/v1/spend?period=daily&scope=global",
    "summary": "/api/v1/reports/summary",
    "policies": "/api/v1/policies",
    "recent_calls": "/api/v1/usage?limit=10",
    "alerts": "/api/v1/alerts?resolved=false&limit=1000",
}
# Budgets a deployment would have, so the dashboard has bars to draw (limits high enough
# that nothing here crosses them).
POLICIES = (
    {"name": "bench company", "scope": "global"},
    {"name": "bench each project", "scope": "project"},
    {"name": "bench each user", "scope": "user"},
)


async def sign_in(api: ApiAccess) -> Http | None:
    """A connection carrying a console session cookie, or None without a console."""
    http = Http(api.port)
    form = await http.request("GET", "/login")
    if form.status == 404:
        await http.close()
        return None
    cookies = list(form.cookies)
    fields = {"key": api.admin_key}
    token = re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', form.body)
    if token:
        fields["csrf_token"] = token.group(1).decode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookies:
        headers["Cookie"] = "; ".join(cookies)
    signed = await http.request("POST", "/login", urlencode(fields).encode(), headers)
    if signed.status not in (200, 302, 303) or not signed.cookies:
        raise RuntimeError(f"POST /login: {signed.status} {signed.body[:300]!r}")
    http.headers["Cookie"] = "; ".join(signed.cookies)
    return http


async def put_policies(api: ApiAccess) -> None:
    http = Http(api.port, {"Authorization": f"Bearer {api.admin_key}"})
    for k, fields in enumerate(POLICIES):
        body = {**fields, "limit_amount": "10000000", "action": "warn"}
        answer = await http.request(
            "PUT",
            f"/api/v1/policies/bench-{k}",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        assert answer.status == 200, (answer.status, answer.body[:300])
    await http.close()


def spend_full_month() -> str:
    """This month's spend as on the last day of a month: the 15th of the previous one
    (a whole month of buckets to sum, inside the 90 days of history)."""
    at = utc_now().replace(day=1) - timedelta(days=16)
    return "/api/v1/spend?" + urlencode({"period": "monthly", "at": at.isoformat()})


async def dashboard(api: ApiAccess, meter: RequestMeter, repeat: int) -> None:
    """The page when the console is there; its reads through the JSON API always."""
    session = await sign_in(api)
    if session is None:
        print("# no console here (GET /login is 404): its JSON reads only", file=sys.stderr)
    else:
        page = await session.request("GET", "/")
        if page.status != 200 or b"<html" not in page.body.lower():
            raise RuntimeError(f"GET / signed in: {page.status} {page.body[:300]!r}")

        async def load() -> None:
            answer = await session.request("GET", "/")
            assert answer.status == 200, answer.status

        with meter.phase("dashboard") as box:
            samples = await timed(repeat, load)
            box.requests = repeat
        emit_latency("dashboard", samples, page_bytes=len(page.body))

        async def poll() -> None:
            answer = await session.request("GET", "/dashboard/live")
            assert answer.status == 200, answer.status

        # What an open dashboard asks for every 2 s (its totals, budgets, recent calls).
        emit_latency("dashboard_live", await timed(repeat, poll))
        await session.close()
    await dashboard_reads(api, meter, repeat)


async def dashboard_reads(api: ApiAccess, meter: RequestMeter, repeat: int) -> None:
    http = Http(api.port, {"Authorization": f"Bearer {api.admin_key}"})
    for target in DASHBOARD_READS.values():
        await http.get_json(target)  # warm
    each: dict[str, list[float]] = {name: [] for name in DASHBOARD_READS}
    rounds = []
    with meter.phase("dashboard_json") as box:
        for _ in range(repeat):
            round_started = time.perf_counter()
            for name, target in DASHBOARD_READS.items():
                started = time.perf_counter()
                answer = await http.request("GET", target)
                each[name].append((time.perf_counter() - started) * 1000)
                assert answer.status == 200, (target, answer.status, answer.body[:300])
            rounds.append((time.perf_counter() - round_started) * 1000)
        box.requests = repeat
    emit_latency("dashboard_json", rounds, reads=list(DASHBOARD_READS))
    for name, samples in each.items():
        p50, p99 = quantiles(samples)
        emit(f"dashboard_json_{name}_p50_ms", p50, "ms", p99_ms=round(p99, 2))
    # Not on the page today: the month's spend as the last day of a month will ask for it.
    full_month = await timed(
        max(repeat // 10, 5), functools.partial(http.get_json, spend_full_month())
    )
    p50, p99 = quantiles(full_month)
    emit("spend_full_month_p50_ms", p50, "ms", p99_ms=round(p99, 2), requests=len(full_month))
    await http.close()


async def deep_cursor(conn: Connection, as_of: int, depth: int, provider: str | None) -> str:
    """The cursor after the first ``depth`` rows of a browse (found here with OFFSET, once,
    to start timing pages there)."""
    where = "stream_seq <= %(as_of)s" + (" AND provider = %(provider)s" if provider else "")
    cursor = await conn.execute(
        f"SELECT occurred_at, event_id FROM usage_history WHERE {where}"
        " ORDER BY occurred_at DESC, event_id DESC OFFSET %(depth)s LIMIT 1".encode(),
        {"as_of": as_of, "provider": provider, "depth": depth - 1},
    )
    row = await cursor.fetchone()
    assert row is not None, f"the history has fewer than {depth} rows"
    return Cursor(as_of, row[0], row[1]).encode()


async def deep_cursors(
    database_url: str, provider: str | None
) -> tuple[int, list[tuple[int, str]]]:
    """How many rows the browse holds, and cursors half-way in and 10,000 rows before its
    oldest end (set-up, outside the timings and the CPU accounting)."""
    conn = await connect(database_url)
    try:
        as_of = await live_position(conn, "history")
        where = "stream_seq <= %s" + (" AND provider = %s" if provider else "")
        found = await (
            await conn.execute(
                f"SELECT count(*) FROM usage_history WHERE {where}".encode(),
                (as_of, provider) if provider else (as_of,),
            )
        ).fetchone()
        assert found is not None
        total = int(found[0])
        depths = (total // 2, total - 10_000)
        return total, [(d, await deep_cursor(conn, as_of, d, provider)) for d in depths]
    finally:
        await conn.close()


async def history(api: ApiAccess, info: StackInfo, meter: RequestMeter, args: Any) -> None:
    http = Http(api.port, {"Authorization": f"Bearer {api.admin_key}"})
    for provider in (None, FILTERED_PROVIDER):
        base = "/api/v1/usage?limit=100" + (f"&provider={provider}" if provider else "")
        label = {"provider": provider} if provider else {}
        total, cursors = await deep_cursors(info.database_url, provider)
        await meter.quiet(args.quiet_limit, args.quiet_wait)
        with meter.phase("history" + (f"_{provider}" if provider else "")) as box:
            first = await timed(args.repeat, functools.partial(http.get_json, base))
            emit_latency("history_page", first, at="page 1", **label)
            box.requests += args.repeat + 1

            following = []
            answer = await http.get_json(base)
            for _ in range(args.pages - 1):
                target = f"{base}&cursor={answer['next_cursor']}"
                started = time.perf_counter()
                answer = await http.get_json(target)
                following.append((time.perf_counter() - started) * 1000)
                assert len(answer["rows"]) == 100
            box.requests += args.pages
            emit_latency("history_page", following, at=f"pages 2-{args.pages}", **label)
            if args.pages > 100:
                emit_latency(
                    "history_page",
                    following[-50:],
                    at=f"pages {args.pages - 49}-{args.pages}"
                    f" ({(args.pages - 50) * 100:,} rows deep)",
                    **label,
                )

            for depth, cursor in cursors:
                samples = []
                answer = await http.get_json(f"{base}&cursor={cursor}")  # warm
                for _ in range(args.deep_pages):
                    target = f"{base}&cursor={answer['next_cursor']}"
                    started = time.perf_counter()
                    answer = await http.get_json(target)
                    samples.append((time.perf_counter() - started) * 1000)
                    assert len(answer["rows"]) == 100
                box.requests += args.deep_pages + 1
                emit_latency(
                    "history_page", samples, at=f"{depth:,} of {total:,} rows deep", **label
                )
    await http.close()


def _vm(pid: int, field_name: str) -> int:
    """A ``/proc/<pid>/status`` size, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


async def export(api: ApiAccess, info: StackInfo, meter: RequestMeter, rows: int) -> None:
    pid = info.worker_pids["api"]
    conn = await connect(info.database_url)
    try:
        as_of = await live_position(conn, "history")
        found = await (
            await conn.execute(
                "SELECT occurred_at FROM usage_history WHERE stream_seq <= %s"
                " ORDER BY occurred_at DESC OFFSET %s LIMIT 1",
                (as_of, rows - 1),
            )
        ).fetchone()
    finally:
        await conn.close()
    assert found is not None
    since: datetime = found[0]
    until = utc_now() + timedelta(days=1)
    query = urlencode({"format": "csv", "since": since.isoformat(), "until": until.isoformat()})
    http = Http(api.port, {"Authorization": f"Bearer {api.admin_key}"})
    hwm_before, rss_before = _vm(pid, "VmHWM"), _vm(pid, "VmRSS")
    highest = rss_before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal highest
        while not done.is_set():
            highest = max(highest, _vm(pid, "VmRSS"))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    lines = size = 0
    with meter.phase("export") as box:
        started = time.perf_counter()
        reply = await http.send(http.encode("GET", f"/api/v1/usage/export?{query}"))
        assert reply.status == 200, reply.status
        async for chunk in http.body(reply):
            lines += chunk.count(b"\n")
            size += len(chunk)
        elapsed = time.perf_counter() - started
        box.requests = lines - 1
    done.set()
    await sampler
    await http.close()
    emit(
        "export_csv_rows_per_s",
        (lines - 1) / elapsed,
        "rows/s",
        rows=lines - 1,
        seconds=round(elapsed, 2),
        mib=round(size / 2**20, 1),
        api_vmhwm_before_mib=round(hwm_before / 1024, 1),
        api_vmhwm_after_mib=round(_vm(pid, "VmHWM") / 1024, 1),
        api_vmrss_before_mib=round(rss_before / 1024, 1),
        api_vmrss_max_during_mib=round(highest / 1024, 1),
    )


async def floors(api: ApiAccess, count: int) -> None:
    """What any request costs before its own work: ``/healthz`` (no key, no database) and
    the smallest read with a key (``/api/v1/policies``: the key's lookup, one query)."""
    http = Http(api.port, {"Authorization": f"Bearer {api.admin_key}"})
    for figure, target in (("healthz", "/healthz"), ("policies", "/api/v1/policies")):
        samples = await timed(count, functools.partial(http.get_json, target))
        p50, p99 = quantiles(samples)
        emit(f"{figure}_p50_ms", p50, "ms", p99_ms=round(p99, 2), requests=count)
    await http.close()


async def checks(api: ApiAccess, meter: RequestMeter, count: int) -> None:
    await floors(api, count)
    http = Http(api.port, {"Authorization": f"Bearer {api.admin_key}"})
    policy = {
        "policy_id": "bench-api-check",
        "name": "bench api check",
        "scope": "user",
        "scope_key": CHECK_USER,
        "limit_amount": "1000000",
        "action": "block",
    }
    answer = await http.request(
        "PUT",
        "/api/v1/policies/bench-api-check",
        json.dumps(policy).encode(),
        {"Content-Type": "application/json"},
    )
    assert answer.status == 200, (answer.status, answer.body[:300])
    request = http.encode(
        "POST",
        "/api/v1/check",
        json.dumps({"model": "gpt-4o", "user_id": CHECK_USER, "estimated_cost": "0.001"}).encode(),
        {"Content-Type": "application/json"},
    )

    async def check() -> str:
        reply = await http.send(request)
        reply.body = b"".join([chunk async for chunk in http.body(reply)])
        result = reply.json()
        assert reply.status == 200 and result["allowed"] and result["enforced"], result
        reservation: str = result["reservation_id"]
        assert reservation, result
        return reservation

    async def release(reservation: str) -> None:
        done = await http.request("POST", f"/api/v1/reservations/{reservation}/release")
        assert done.status in (200, 204), done.status

    for _ in range(20):  # warm: connections, plans, the enforcer's caches
        await release(await check())
    samples = []
    with meter.phase("check") as box:
        for _ in range(count):
            started = time.perf_counter()
            reservation = await check()
            samples.append((time.perf_counter() - started) * 1000)
            await release(reservation)
        box.requests = count
    emit_latency("check", samples, note="cpu_check: per check, its release included")
    await http.close()


# -- ingest: client processes --------------------------------------------------------------

_MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-flash"),
]


def _usage_bodies(process: int) -> list[bytes]:
    bodies = []
    for i in range(64):
        provider, model = _MODELS[i % len(_MODELS)]
        usage = {
            "model": model,
            "provider": provider,
            "input_tokens": 400 + 17 * i,
            "cached_tokens": 100,
            "output_tokens": 150 + 5 * i,
            "user_id": f"http-user-{(process * 64 + i) % 500}",
            "project_id": f"project-{i % 20}",
            "tags": {"feature": "bench"},
        }
        bodies.append(json.dumps(usage).encode())
    return bodies


async def ingest_client(
    port: int, key: str, seconds: float, in_flight: int, index: int, batch: int = 1
) -> None:
    """One client process: prints ``ready``, waits for a line on stdin, posts for
    ``seconds`` on ``in_flight`` connections, prints its counts (of events) as JSON."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connections = [Http(port, headers) for _ in range(in_flight)]
    bodies = _usage_bodies(index)
    if batch > 1:  # each request carries ``batch`` of the bodies, answered 200
        batches = [
            b'{"events": [' + b",".join(bodies[(k + j) % len(bodies)] for j in range(batch)) + b"]}"
            for k in range(len(bodies))
        ]
        requests = [connections[0].encode("POST", "/api/v1/usage/batch", b) for b in batches]
    else:
        requests = [connections[0].encode("POST", "/api/v1/usage", b) for b in bodies]
    for http in connections:  # connect and warm
        reply = await http.send(requests[0])
        _ = [chunk async for chunk in http.body(reply)]
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    counts: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    cpu_started = time.process_time()

    async def post(http: Http, offset: int) -> None:
        i = offset
        while time.monotonic() < deadline:
            try:
                reply = await http.send(requests[i % len(requests)])
                _ = [chunk async for chunk in http.body(reply)]
                status = "201" if batch > 1 and reply.status == 200 else str(reply.status)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status = type(exc).__name__
                await http.close()
            counts[status] = counts.get(status, 0) + batch
            i += 1

    started = time.monotonic()
    await asyncio.gather(*(post(http, k) for k, http in enumerate(connections)))
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    for http in connections:
        await http.close()
    print(json.dumps({"counts": counts, "seconds": elapsed, "cpu": cpu}), flush=True)


def run_clients(api: ApiAccess, args: Any) -> tuple[dict[str, int], float, float]:
    """Start the client processes, let them go at once; their answers by status, the
    seconds from go to the last one done, and their CPU seconds."""
    command = [
        sys.executable,
        __file__,
        "--client",
        "--port",
        str(api.port),
        "--seconds",
        str(args.seconds),
        "--in-flight",
        str(args.in_flight),
        "--ingest-batch",
        str(args.ingest_batch),
    ]
    clients = [
        subprocess.Popen(
            [*command, "--index", str(k)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "BENCH_API_KEY": api.admin_key},
        )
        for k in range(args.processes)
    ]
    for client in clients:
        assert client.stdout is not None and client.stdout.readline() == "ready\n"
    started = time.perf_counter()
    for client in clients:
        assert client.stdin is not None
        client.stdin.write("go\n")
        client.stdin.flush()
    outputs = [json.loads(c.communicate()[0].splitlines()[-1]) for c in clients]
    elapsed = time.perf_counter() - started
    counts: dict[str, int] = {}
    for output in outputs:
        for status, n in output["counts"].items():
            counts[status] = counts.get(status, 0) + n
    return counts, elapsed, sum(o["cpu"] for o in outputs)


async def ingest(api: ApiAccess, meter: RequestMeter, args: Any) -> None:
    with meter.phase("ingest") as box:
        counts, elapsed, box.extra["clients"] = await asyncio.to_thread(run_clients, api, args)
        box.requests = sum(counts.values())
    emit(
        "ingest_events_per_s",
        counts.get("201", 0) / elapsed,
        "events/s",
        processes=args.processes,
        in_flight=args.in_flight,
        batch=args.ingest_batch,
        seconds=round(elapsed, 2),
        answers=counts,
    )


# -- main ----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("budget.stack").setLevel(logging.INFO)  # starts, stops, restarts
    phases = args.phases.split(",")
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"unknown phases {sorted(unknown)}; choose from {list(PHASES)}")

    async def before_workers(nats_url: str, database_url: str, settings: Settings) -> None:
        await build(nats_url, database_url, settings, events=args.events, batch=args.batch)

    workers = args.workers.split(",") if args.workers else []
    async with embedded_stack(
        "api",
        workers=workers,
        data_dir=args.data_dir,
        before_workers=before_workers,
        default_limit=None,
        service_env=UNLIMITED_CALLERS,
    ) as (info, _settings):
        api = await api_access(info)
        await settle(info.database_url, args.settle)
        meter = RequestMeter(info.data_dir)
        await put_policies(api)
        runs: dict[str, Callable[[], Awaitable[None]]] = {
            "dashboard": lambda: dashboard(api, meter, args.repeat),
            "history": lambda: history(api, info, meter, args),
            "export": lambda: export(api, info, meter, args.export_rows),
            "check": lambda: checks(api, meter, args.checks),
            "ingest": lambda: ingest(api, meter, args),
        }
        for phase in PHASES:
            if phase in phases:
                await meter.quiet(args.quiet_limit, args.quiet_wait)
                await runs[phase]()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events of history")
    parser.add_argument("--batch", type=int, default=20_000, help="events per rollup apply")
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the stack's data here")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases")
    parser.add_argument("--settle", type=float, default=10, help="seconds to let the stack idle")
    parser.add_argument("--repeat", type=int, default=200, help="timed dashboards, first pages")
    parser.add_argument("--pages", type=int, default=1000, help="history pages to follow")
    parser.add_argument("--deep-pages", type=int, default=50, help="pages timed at each depth")
    parser.add_argument("--export-rows", type=int, default=1_000_000, help="rows to export")
    parser.add_argument("--checks", type=int, default=2000, help="timed checks")
    parser.add_argument("--processes", type=int, default=4, help="ingest client processes")
    parser.add_argument("--in-flight", type=int, default=16, help="connections per client")
    parser.add_argument(
        "--ingest-batch",
        type=int,
        default=1,
        help="events per ingest request: 1 posts /api/v1/usage, more /api/v1/usage/batch",
    )
    parser.add_argument("--seconds", type=float, default=15, help="ingest phase length")
    parser.add_argument(
        "--workers",
        help="comma-separated workers and services to run (default: all that `budget up`"
        " runs; the API needs api and api_keys); for finding where the time goes",
    )
    parser.add_argument(
        "--quiet-limit",
        type=float,
        default=0.2,
        help="before each phase, wait until the rest of the machine uses fewer cores",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=900, help="seconds to wait for that at most"
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.client:
        asyncio.run(
            ingest_client(
                parsed.port,
                os.environ["BENCH_API_KEY"],
                parsed.seconds,
                parsed.in_flight,
                parsed.index,
                parsed.ingest_batch,
            )
        )
    else:
        asyncio.run(main(parsed))
