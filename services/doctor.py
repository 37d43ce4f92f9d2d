"""``budget doctor``: the seed's troubleshooting list, walked against the running system.

Each check prints one line, ``ok``, ``note`` (worth knowing, not wrong) or ``problem``, and
under a problem how to fix it; the command exits 1 when any check found a problem. Checks
that need a server which does not answer are reported as not checked, never as fine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import typer
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX
from nats.js.errors import NotFoundError
from psycopg import errors as pg_errors
from pydantic import ValidationError

from budget.config import ConfigError, Settings
from budget.natsconn import PermissionDenied, permitted, refusal_message
from budget.periods import Period, period_bounds
from budget.pricing import PricingRegistry
from budget.redaction import install_redaction, redact, secrets_of
from events import Alert, AlertRule, utc_now
from events.alerts import CHANNELS
from events.queries import AlertsQuery
from projections.alerts import load_rules
from projections.engine.checkpoints import list_checkpoints
from projections.engine.log import LogError
from projections.engine.projection import Connection
from projections.engine.runner import EngineConfig, group_consumer_name
from projections.engine.writer import VersionWriter
from projections.queries import alerts_page, projection_status
from projections.registry import get_projection, groups_of, worker_projections
from projections.report_queries import ReportBuilder, ceil_quarter, floor_quarter
from services.cli_context import load_checked_settings, validation_message
from services.ops import ConnectError, database, nats_client
from services.probes import probe_services

__all__ = ["Finding", "diagnose", "doctor"]

Status = Literal["ok", "note", "problem"]
_ASK_WITHIN = 2.0  # seconds the enforcer and the query service have to answer
_RECENT_ALERTS = 1000  # newest alerts looked at for cooldowns still running
MAX_LAG = EngineConfig().batch_size
"""``--max-lag``'s default: one worker batch. A worker that keeps up applies what arrived
while its last batch was in the database, so a busy system is often that far behind and
no further; the Prometheus rule (deploy/prometheus/rules.yml) watches longer backlogs."""
_PRICES_FROM = "projection reports"  # the check of the read model that counts unpriced calls


@dataclass(frozen=True)
class Finding:
    status: Status
    check: str
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        detail = " ".join(self.detail.split())  # a driver's message may run to several lines
        shown = [f"{self.status:<8} {self.check:<20} {detail}"]
        if self.fix:
            shown.append(f"{'':<8} {'':<20} fix: {self.fix}")
        return [redact(line) for line in shown]


def ok(check: str, detail: str) -> Finding:
    return Finding("ok", check, detail)


def problem(check: str, detail: str, fix: str) -> Finding:
    return Finding("problem", check, detail, fix)


def not_checked(checks: str, because: str) -> Finding:
    return Finding("note", checks, f"not checked: {because}")


@dataclass(frozen=True)
class Options:
    max_lag: int
    days: int


async def diagnose(settings: Settings, options: Options) -> list[Finding]:
    """Every check of a configuration that loaded, in the seed's order."""
    found = [_enabled(settings)]
    async with contextlib.AsyncExitStack() as opened:
        try:
            nc: Client | None = await opened.enter_async_context(
                nats_client(settings.nats_url, settings)
            )
            found.append(ok("nats", "reachable"))
        except ConnectError as exc:
            nc = None
            found.append(problem("nats", *_said(exc)))
        except ConfigError as exc:  # its password file, say: the other checks still run
            nc = None
            fix = "correct the file or the setting the message names"
            found.append(problem("nats", str(exc), fix))
        try:
            conn: Connection | None = await opened.enter_async_context(
                database(settings.database_url)
            )
            found.append(ok("postgresql", "reachable"))
        except ConnectError as exc:
            conn = None
            found.append(problem("postgresql", *_said(exc)))
        if conn is not None and not await _guard(found, "migrations", _migrated(conn)):
            conn = None
        streams = nc is not None and await _guard(found, "streams", _streams(nc, settings))
        if nc is None or conn is None or not streams:
            found.append(not_checked("projections", "needs NATS, its streams and PostgreSQL"))
        else:
            await _guard(found, "projections", _projections(conn, nc, settings, options))
        if nc is None:
            found.append(not_checked("services", "NATS is unreachable"))
        else:
            for probe in await probe_services(nc, settings, _ASK_WITHIN):
                if probe.ok:
                    found.append(ok(probe.name, probe.detail))
                else:
                    found.append(problem(probe.name, probe.detail, _START[probe.name]))
        if conn is None:
            found.append(not_checked("alerts, prices", "PostgreSQL is unreachable or unmigrated"))
        else:
            await _guard(found, "alerts", _alerting(conn, settings))
            if _current(found, _PRICES_FROM):
                await _guard(found, "prices", _unpriced(conn, settings, options.days))
            else:
                because = "read from the reports projection, not found current (see projections)"
                found.append(not_checked("prices", because))
    return found


_START = {
    "enforcer": "start `budget enforcer` (or `budget up`); until then calls under BLOCK and"
    " THROTTLE policies are refused (allowed with fail_open)",
    "query service": "start `budget query-service` (or `budget up`); host apps' reads"
    " (policies, alerts, reports) wait on it",
}


def _current(found: Sequence[Finding], check: str) -> bool:
    """Whether ``check`` was made and found fine: a read model another check reads is
    current only then (an empty one of a worker that never ran would say all is well)."""
    return any(f.check == check and f.status == "ok" for f in found)


def _said(exc: ConnectError | LogError) -> tuple[str, str]:
    """What failed and what to do: each message ends in ``; <the fix>``."""
    detail, _, fix = str(exc).rpartition("; ")
    return (detail, fix) if detail else (fix, "see the message")


async def _guard(found: list[Finding], check: str, work: Awaitable[list[Finding]]) -> bool:
    """Add ``work``'s findings; a check that fails outright is a problem of its own, not
    the end of the run. Whether it found no problem."""
    try:
        more = await work
    except Exception as exc:
        found.append(problem(check, f"{type(exc).__name__}: {exc}", "see the message"))
        return False
    found.extend(more)
    return all(f.status != "problem" for f in more)


def _enabled(settings: Settings) -> Finding:
    if settings.enabled:
        return ok("configuration", "valid; budget.enabled: true")
    return problem(
        "configuration",
        "budget.enabled is false: trackers publish nothing and allow every call",
        "set `enabled: true` under `budget:` in config.yaml (or BUDGET_ENABLED=true)",
    )


async def _migrated(conn: Connection) -> list[Finding]:
    try:
        await list_checkpoints(conn)
    except pg_errors.UndefinedTable:
        fix = "run `budget migrate` (`budget up` does it)"
        return [problem("migrations", "the database has no Budget Manager tables", fix)]
    return []


async def _streams(nc: Client, settings: Settings) -> list[Finding]:
    js = nc.jetstream()
    topology = settings.topology
    missing = []
    for spec in (topology.event_stream, topology.dead_letter_stream):
        asked = f"{DEFAULT_PREFIX}.STREAM.INFO.{spec.name}"
        try:
            await permitted(nc, asked, js.stream_info(spec.name))
        except NotFoundError:
            missing.append(spec.name)
        except PermissionDenied:  # the credential, not the server: say which may
            said = refusal_message(asked, topology=topology, user=settings.nats_user)
            detail, _, fix = said.partition("; ")
            return [problem("streams", detail, fix)]
    if missing:
        detail = f"stream {', '.join(missing)} missing (subject prefix {topology.prefix!r})"
        fix = "run `budget migrate` (`budget up` does it), or set BUDGET_SUBJECT_PREFIX"
        return [problem("streams", detail, fix)]
    names = f"{topology.event_stream.name}, {topology.dead_letter_stream.name}"
    return [ok("streams", f"{names} present")]


async def _projections(
    conn: Connection, nc: Client, settings: Settings, options: Options
) -> list[Finding]:
    """Each live version's log (the one it was built from), consumer (its worker has run),
    a worker reading it, and lag; a rebuild's progress."""
    js = nc.jetstream()
    stream = settings.topology.event_stream.name
    found = []
    asked: dict[str, _Read] = {}  # a group's consumer is asked once for its projections
    for status in await projection_status(conn, js, settings.topology):
        check = f"projection {status.name}"
        behind = f"{status.lag} events behind (checkpoint at stream sequence {status.checkpoint})"
        if not status.live:
            found.append(Finding("note", check, f"version {status.version} rebuilding, {behind}"))
            continue
        writer = VersionWriter(get_projection(status.name), status.version)
        try:
            await writer.verify_log(conn, js, stream)
        except LogError as exc:
            found.append(problem(check, *_said(exc)))
            continue
        ways = _ways_to_run(writer)
        existing, running = await _read_consumer(js, stream, ways, asked)
        if not existing:
            names = " or ".join(consumer for _, consumer in ways)
            workers = " or ".join(f"`budget worker {worker}`" for worker, _ in ways)
            detail = f"no consumer {names}: its worker has never run; {behind}"
            found.append(problem(check, detail, f"start {workers} (or `budget up`)"))
            continue
        if running is None:  # however small its lag: nothing applies what comes next
            names = " or ".join(consumer for _, consumer in existing)
            workers = " or ".join(f"`budget worker {worker}`" for worker, _ in existing)
            detail = f"no worker reads consumer {names}; {behind}"
            fix = f"start {workers} (or `budget up`); its log says why it stopped"
            found.append(problem(check, detail, fix))
            continue
        worker, consumer = running
        if status.lag > options.max_lag:
            fix = (
                f"is `budget worker {worker}` (or `budget up`) running? Its log says why it stopped"
            )
            found.append(problem(check, behind, fix))
        else:
            found.append(ok(check, f"consumer {consumer}, lag {status.lag}"))
    return found


def _ways_to_run(writer: VersionWriter) -> list[tuple[str, str]]:
    """Each worker that runs the live version of ``writer``'s projection, with the consumer
    it reads through: its group's (``budget up`` and compose run groups), or its own."""
    name = writer.projection.name
    groups = [(g, group_consumer_name(worker_projections(g))) for g in groups_of(name)]
    return [*groups, (name, writer.durable)]


_Read = Literal["missing", "idle", "stopped", "read"]
_READ_WITHIN = 3.0
"""Seconds a worker has to show it reads its consumer: an idle one renews its pull
request every few seconds (``projections.engine.reader``), with under a second between
two; a busy one holds events delivered and not yet acknowledged."""


async def _read_consumer(
    js: JetStreamContext,
    stream: str,
    ways: Sequence[tuple[str, str]],
    asked: dict[str, _Read],
) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
    """Those of ``ways`` (worker, consumer) whose consumer exists on ``stream``, and the
    first of them a worker reads (None if none does within ``_READ_WITHIN``); ``asked``
    keeps each consumer's answer."""
    deadline = asyncio.get_running_loop().time() + _READ_WITHIN
    while True:
        for _, consumer in ways:
            if asked.get(consumer) in (None, "idle"):
                asked[consumer] = await _consumer_read(js, stream, consumer)
        existing = [(w, c) for w, c in ways if asked[c] != "missing"]
        running = next(((w, c) for w, c in existing if asked[c] == "read"), None)
        if running or not existing:
            return existing, running
        if asyncio.get_running_loop().time() >= deadline:
            asked.update({c: "stopped" for _, c in existing if asked[c] == "idle"})
            return existing, None
        await asyncio.sleep(0.25)


async def _consumer_read(js: JetStreamContext, stream: str, consumer: str) -> _Read:
    try:
        info = await js.consumer_info(stream, consumer)
    except NotFoundError:
        return "missing"
    return "read" if info.num_waiting or info.num_ack_pending else "idle"


async def _alerting(conn: Connection, settings: Settings) -> list[Finding]:
    """Rules configured, each with a channel this configuration enables, and the
    cooldowns holding back a repeat right now."""
    channels = settings.alert_channels
    enabled = [c for c in CHANNELS if channels.enabled(c)]
    disabled = [c for c in CHANNELS if c not in enabled]
    found = []
    if enabled:
        also = f" (disabled: {', '.join(disabled)})" if disabled else ""
        found.append(ok("alert channels", f"enabled: {', '.join(enabled)}{also}"))
    else:
        fix = "set `enabled: true` for one under alert_channels in config.yaml"
        found.append(problem("alert channels", "every alert channel is disabled", fix))
    rules = await load_rules(conn)
    if not rules:
        fix = "add one on the web console's Rules page or with AlertEngine.add_rule"
        found.append(problem("alert rules", "no alert rules: nothing raises alerts", fix))
    silent = [r for r in rules if not set(r.channels) & set(enabled)]
    for rule in silent:
        found.append(
            problem(
                "alert rules",
                f"rule {rule.rule_id} ({rule.name!r}) sends to {', '.join(rule.channels)},"
                " none of them enabled: its alerts go nowhere",
                "enable one of its channels under alert_channels in config.yaml, or give the"
                " rule an enabled channel",
            )
        )
    if rules and not silent:
        found.append(ok("alert rules", f"{len(rules)} rules, each with an enabled channel"))
    found.extend(await _cooldowns(conn, rules))
    return found


async def _cooldowns(conn: Connection, rules: Sequence[AlertRule]) -> list[Finding]:
    """A rule holds back an alert for the same policy and key within its cooldown of one it
    raised for them, before or after it in event time; read here against the clock from
    the last one (a late event's alert from before it is held back alike)."""
    by_id = {r.rule_id: r for r in rules if r.cooldown_minutes}
    newest, _ = await alerts_page(conn, AlertsQuery(limit=_RECENT_ALERTS))
    now = utc_now()
    seen = set()
    found = []
    for stored in newest:
        alert = stored.alert
        rule = by_id.get(alert.rule_id)
        subject = (alert.rule_id, alert.policy_id, alert.scope_key)
        if rule is None or subject in seen:
            continue
        seen.add(subject)
        cooldown = timedelta(minutes=rule.cooldown_minutes)
        until, since = alert.raised_at + cooldown, alert.raised_at - cooldown
        if until > now:
            found.append(
                Finding(
                    "note",
                    "cooldowns",
                    f"rule {rule.rule_id} ({rule.cooldown_minutes} min) holds back repeats"
                    f" about {_about(alert)} until {until:%F %H:%M} UTC (and late ones of"
                    f" events since {since:%F %H:%M})",
                    "lower the rule's cooldown_minutes if those repeats matter",
                )
            )
    return found or [ok("cooldowns", "no cooldown is holding back an alert now")]


def _about(alert: Alert) -> str:
    """What a rule's cooldown is counted for: the policy and key, or an anomaly's scope."""
    if alert.policy_id is not None:
        key = f", key {alert.scope_key}" if alert.scope_key else ""
        return f"policy {alert.policy_id}{key}"
    return " ".join(str(p) for p in (alert.scope, alert.scope_key) if p) or "it"


async def _unpriced(conn: Connection, settings: Settings, days: int) -> list[Finding]:
    """Models called in the last ``days`` days whose calls were recorded without a cost,
    read from the report rollups."""
    now = utc_now()
    start, end = floor_quarter(now - timedelta(days=days)), ceil_quarter(now)
    # ``--until`` is exclusive and a date means its midnight: tomorrow's covers today's calls.
    reprice_until = period_bounds(Period.DAILY, now)[1]
    reprice = f"`budget reprice --since {start:%F} --until {reprice_until:%F}`"
    totals = await ReportBuilder(conn).totals(conn, "model", start, end)
    if not totals:
        return [ok("prices", f"no call recorded in the last {days} days")]
    registry = PricingRegistry(settings.price_overrides)
    found = []
    for row in totals:
        if row.unpriced_requests:
            provider, model = row.key1, row.key2
            if registry.get_model_pricing(model, provider, now) is None:
                fix = (
                    f"check the name against `budget prices list --provider {provider}`, or"
                    f" add it to price_overrides in config.yaml; then {reprice} prices them"
                )
            else:  # the price is not to blame for calls recorded since it was there
                fix = (
                    f"{model} has a price now: {reprice} prices the calls recorded before it"
                    " had one; the others lacked what it is priced by, as their"
                    f" unpriced_reason says (`budget report history --start {start:%F}"
                    f" --end {reprice_until:%F}`)"
                )
            found.append(
                problem(
                    "prices",
                    f"{provider}/{model}: {row.unpriced_requests} of {row.requests} calls in"
                    f" the last {days} days have no price",
                    fix,
                )
            )
    return found or [ok("prices", f"every model called in the last {days} days has a price")]


def doctor(
    ctx: typer.Context,
    max_lag: Annotated[
        int,
        typer.Option(
            min=0,
            help="events a projection may be behind before it is a problem (the default is"
            " one worker batch, what a busy system keeps up with; 0 shows any event not"
            " applied yet)",
        ),
    ] = MAX_LAG,
    days: Annotated[
        int, typer.Option(min=1, max=3660, help="look this many days back for unpriced models")
    ] = 30,
) -> None:
    """Walk the troubleshooting list: configuration valid and enabled, NATS and PostgreSQL
    reachable, streams and consumers present, each projection's worker reading and its lag,
    the enforcer and the query service answering, alert rules and channels enabled,
    cooldowns holding alerts back, models called without a price (read from the reports
    projection: not checked unless it is current). One line each (ok, note or problem, and
    how to fix a problem); exits 1 if a problem was found."""
    config: Path | None = ctx.obj
    try:
        settings = load_checked_settings(config)
    except (ConfigError, ValidationError) as exc:
        message = validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
        fix = "correct config.yaml or the BUDGET_* variable the message names"
        _show([problem("configuration", message, fix)])
        raise typer.Exit(1) from None
    install_redaction(secrets_of(settings))
    found = asyncio.run(diagnose(settings, Options(max_lag=max_lag, days=days)))
    _show(found)
    raise typer.Exit(1 if any(f.status == "problem" for f in found) else 0)


def _show(found: Sequence[Finding]) -> None:
    for finding in found:
        for line in finding.lines():
            typer.echo(line)
