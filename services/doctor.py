"""``budget doctor``: the seed's troubleshooting list, walked against the running system.

Each check prints one line, ``ok``, ``note`` (worth knowing, not wrong) or ``problem``, and
under a problem how to fix it; the command exits 1 when any check found a problem. Checks
that need a server which does not answer are reported as not checked, never as fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, LiteralString

import typer
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX
from nats.js.errors import NotFoundError
from psycopg import errors as pg_errors
from pydantic import ValidationError

from budget.config import ConfigError, Settings, shown_url
from budget.natsconn import PermissionDenied, permitted, refusal_message
from budget.periods import Period, period_bounds
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
from services.ops import ConnectError, CredentialRefused, database, nats_client
from services.probes import Answering, probe_services
from services.stack import STACK_WORKERS
from services.stack_state import RunningStack, running_stack

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
    # A `budget up` on this data directory tells where its servers are, and that it
    # restarts them and the workers: a fix that says to start them would not be true.
    stack = running_stack(settings.data_dir)
    async with contextlib.AsyncExitStack() as opened:
        try:
            nc: Client | None = await opened.enter_async_context(
                nats_client(settings.nats_url, settings)
            )
            found.append(ok("nats", "reachable"))
            found.extend(_other_than(stack, NATS, settings.nats_url))
        except ConnectError as exc:
            nc = None
            found.append(problem("nats", *_unreachable(exc, stack, NATS, settings.nats_url)))
        except ConfigError as exc:  # its password file, say: the other checks still run
            nc = None
            fix = "correct the file or the setting the message names"
            found.append(problem("nats", str(exc), fix))
        try:
            conn: Connection | None = await opened.enter_async_context(
                database(settings.database_url)
            )
            found.append(ok("postgresql", "reachable"))
            found.extend(_other_than(stack, POSTGRESQL, settings.database_url))
        except ConnectError as exc:
            conn = None
            url = settings.database_url
            found.append(problem("postgresql", *_unreachable(exc, stack, POSTGRESQL, url)))
        if stack is not None and not (
            NATS.served_by(stack, settings.nats_url)
            and POSTGRESQL.served_by(stack, settings.database_url)
        ):
            stack = None  # what it runs is not what the checks below look at
        if conn is not None and not await _guard(found, "migrations", _migrated(conn)):
            conn = None
        streams = nc is not None and await _guard(found, "streams", _streams(nc, settings, stack))
        if nc is None or conn is None or not streams:
            found.append(not_checked("projections", "needs NATS, its streams and PostgreSQL"))
        else:
            await _guard(found, "projections", _projections(conn, nc, settings, options, stack))
        if nc is None:
            found.append(not_checked("services", "needs NATS"))
        else:
            for probe in await probe_services(nc, settings, _ASK_WITHIN):
                if probe.ok:
                    found.append(ok(probe.name, probe.detail))
                else:
                    found.append(problem(probe.name, probe.detail, _service_fix(probe, stack)))
        if conn is None:
            found.append(not_checked("alerts, prices", "PostgreSQL is unreachable or unmigrated"))
        else:
            await _guard(found, "alerts", _alerting(conn, settings))
            await _guard(found, "alert deliveries", _deliveries(conn, options.days))
            if _current(found, _PRICES_FROM):
                await _guard(found, "prices", _unpriced(conn, options.days))
            else:
                because = "read from the reports projection, not found current (see projections)"
                found.append(not_checked("prices", because))
    return found


@dataclass(frozen=True)
class _Server:
    check: str
    name: str
    variable: str

    def served_by(self, stack: RunningStack, url: str) -> bool:
        return stack.serves_nats(url) if self is NATS else stack.serves_database(url)

    def url_of(self, stack: RunningStack) -> str:
        return stack.nats_url if self is NATS else stack.database_url

    def log_of(self, stack: RunningStack) -> Path:
        return stack.nats_log if self is NATS else stack.postgres_log

    def export(self, stack: RunningStack) -> str:
        return f"export {self.variable}={shlex.quote(self.url_of(stack))}"


NATS = _Server("nats", "NATS", "BUDGET_NATS_URL")
POSTGRESQL = _Server("postgresql", "PostgreSQL", "BUDGET_DATABASE_URL")


def _unreachable(
    exc: ConnectError, stack: RunningStack | None, server: _Server, url: str
) -> tuple[str, str]:
    """What failed and what to do, told by what runs on the data directory."""
    detail, fix = _said(exc)
    if stack is None:
        return detail, fix
    if not server.served_by(stack, url):
        return detail, f"{stack.runs} runs {server.name} elsewhere: {server.export(stack)}"
    if isinstance(exc, CredentialRefused):
        if server is NATS:
            return detail, f"as an admin of {stack.runs}: export {stack.nats_login('service')}"
        return detail, (
            f"{stack.runs} made the password files in {stack.data_dir / 'credentials'},"
            " readable by their owner only: run this as the user that runs it"
        )
    return detail, (
        f"{stack.runs} runs it and restarts it within a second when it dies; if it stays"
        f" unreachable, its log says why: {server.log_of(stack)} (and `budget up`'s output)"
    )


def _other_than(stack: RunningStack | None, server: _Server, url: str) -> list[Finding]:
    """A note when the server this shell reached is not the one running on its data
    directory: what the checks say then is of another deployment."""
    if stack is None or server.served_by(stack, url):
        return []
    detail = (
        f"{shown_url(url)} is not the {server.name} of {stack.runs},"
        f" {server.url_of(stack)}: the checks below are of the one reached"
    )
    return [Finding("note", server.check, detail, f"to check that stack: {server.export(stack)}")]


def _started(what: str, stack: RunningStack | None) -> str:
    """How to get ``what`` (a command) running."""
    if stack is None:
        return f"start {what} (or `budget up`)"
    return f"{stack.runs} runs {what} and restarts it when it exits: its output says why"


def _service_fix(probe: Answering, stack: RunningStack | None) -> str:
    if probe.answered:  # it runs, and said what keeps it from answering
        return (
            "it runs but cannot answer: see what its answer names (PostgreSQL, say, on its"
            " line) and its log"
        )
    consequence = _UNANSWERED[probe.name]
    return f"{_started(_COMMAND[probe.name], stack)}; {consequence}"


_COMMAND = {"enforcer": "`budget enforcer`", "query service": "`budget query-service`"}
_UNANSWERED = {
    "enforcer": "until then calls under BLOCK and THROTTLE policies are refused (allowed with"
    " fail_open)",
    "query service": "host apps' reads (policies, alerts, reports) wait on it",
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


async def _streams(nc: Client, settings: Settings, stack: RunningStack | None) -> list[Finding]:
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
            if stack is not None:
                fix = f"as an admin of {stack.runs}: export {stack.nats_login('service')}"
            return [problem("streams", detail, fix)]
    if missing:
        detail = f"stream {', '.join(missing)} missing (subject prefix {topology.prefix!r})"
        fix = "run `budget migrate` (`budget up` does it), or set BUDGET_SUBJECT_PREFIX"
        return [problem("streams", detail, fix)]
    names = f"{topology.event_stream.name}, {topology.dead_letter_stream.name}"
    return [ok("streams", f"{names} present")]


async def _projections(
    conn: Connection,
    nc: Client,
    settings: Settings,
    options: Options,
    stack: RunningStack | None,
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
            detail = f"no consumer {names}: its worker has never run; {behind}"
            found.append(problem(check, detail, _started(_workers(ways, stack), stack)))
            continue
        if running is None:  # however small its lag: nothing applies what comes next
            names = " or ".join(consumer for _, consumer in existing)
            detail = f"no worker reads consumer {names}; {behind}"
            fix = _started(_workers(existing, stack), stack)
            found.append(problem(check, detail, f"{fix}; its log says why it stopped"))
            continue
        worker, consumer = running
        if status.lag > options.max_lag:
            if stack is None:
                fix = f"is `budget worker {worker}` (or `budget up`) running? Its log says why"
            else:
                fix = f"{stack.runs} runs `budget worker {worker}`: its output says why"
            found.append(problem(check, behind, f"{fix} it stopped"))
        else:
            found.append(ok(check, f"consumer {consumer}, lag {status.lag}"))
    return found


def _ways_to_run(writer: VersionWriter) -> list[tuple[str, str]]:
    """Each worker that runs the live version of ``writer``'s projection, with the consumer
    it reads through: its group's (``budget up`` and compose run groups), or its own."""
    name = writer.projection.name
    groups = [(g, group_consumer_name(worker_projections(g))) for g in groups_of(name)]
    return [*groups, (name, writer.durable)]


def _workers(ways: Sequence[tuple[str, str]], stack: RunningStack | None) -> str:
    """The commands that run a projection: under ``budget up``, the one it runs."""
    if stack is not None:
        ways = [next((way for way in ways if way[0] in STACK_WORKERS), ways[0])]
    return " or ".join(f"`budget worker {worker}`" for worker, _ in ways)


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
        if rule.channels:
            sends = f"sends to {', '.join(rule.channels)}, none of them enabled"
            fix = "enable one of its channels under alert_channels in config.yaml, or give"
        else:
            sends, fix = "sends to no channel", "give"
        found.append(
            problem(
                "alert rules",
                f"rule {rule.rule_id} ({rule.name!r}) {sends}: its alerts go nowhere",
                f"{fix} the rule an enabled channel",
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


_FAILING: LiteralString = """
    SELECT DISTINCT ON (channel) channel, count(*) OVER whole, min(created_at) OVER whole,
        alert_id, last_error
    FROM alert_outbox WHERE status = 'pending'
        AND channel IN (SELECT channel FROM alert_outbox
                        WHERE status = 'pending' AND attempts > 0)
    WINDOW whole AS (PARTITION BY channel)
    ORDER BY channel, attempts = 0, seq"""
"""Per channel with a failing alert: every alert it has not sent (those behind the
failing one too), the oldest one's time, and the first failing one."""
_UNTRIED: LiteralString = """
    SELECT channel, count(*), min(created_at) FROM alert_outbox
    WHERE status = 'pending' AND attempts = 0 AND created_at < now() - %s
        AND channel NOT IN (SELECT channel FROM alert_outbox
                            WHERE status = 'pending' AND attempts > 0)
    GROUP BY channel ORDER BY channel"""
_GIVEN_UP: LiteralString = """
    SELECT DISTINCT ON (channel) channel, count(*) OVER (PARTITION BY channel), alert_id,
        last_error
    FROM alert_outbox WHERE status = 'failed' AND created_at >= now() - %s
    ORDER BY channel, seq DESC"""
_UNTRIED_AFTER = timedelta(minutes=5)
"""How long a queued alert may wait untried before no notifier counts as sending on its
channel: a running one is woken at once (the evaluator's NOTIFY) and looks every second."""


async def _deliveries(conn: Connection, days: int) -> list[Finding]:
    """Alerts a channel has not delivered: failing now (each is retried for a day, the
    channel's later ones held back), queued and never tried (no notifier sends on that
    channel), or given up in the last ``days`` days. The channels' settings are the
    notifier's: only what it did tells whether its receivers take the alerts."""
    found = []
    failing = await (await conn.execute(_FAILING)).fetchall()
    for channel, count, since, alert_id, why in failing:
        found.append(
            problem(
                "alert deliveries",
                f"{channel}: {_alerts(count)} not sent, the oldest queued {since:%F %H:%M}"
                f" UTC; sending fails: {why}",
                f"make the {channel} receiver take them (`budget alerts show {alert_id}`);"
                " each is retried for a day, then given up",
            )
        )
    untried = await conn.execute(_UNTRIED, (_UNTRIED_AFTER,))
    for channel, count, since in await untried.fetchall():
        found.append(
            problem(
                "alert deliveries",
                f"{channel}: {_alerts(count)} queued since {since:%F %H:%M} UTC, never tried",
                "start `budget notifier` (or `budget up`); no notifier sends on this channel",
            )
        )
    given_up = await conn.execute(_GIVEN_UP, (timedelta(days=days),))
    for channel, count, alert_id, why in await given_up.fetchall():
        found.append(
            Finding(
                "note",
                "alert deliveries",
                f"{channel}: {_alerts(count)} of the last {days} days given up, never"
                f" delivered there; the newest: {why}",
                f"`budget alerts show {alert_id}`; `budget alerts list` and the console"
                " still have them",
            )
        )
    return found or [ok("alert deliveries", "every alert queued was sent")]


def _alerts(count: int) -> str:
    return f"{count} alert{'s' if count != 1 else ''}"


async def _unpriced(conn: Connection, days: int) -> list[Finding]:
    """Models called in the last ``days`` days whose calls were recorded without a cost,
    read from the report rollups."""
    now = utc_now()
    start, end = floor_quarter(now - timedelta(days=days)), ceil_quarter(now)
    # ``--until`` is exclusive and a date means its midnight: tomorrow's covers today's calls.
    reprice_until = period_bounds(Period.DAILY, now)[1]
    totals = await ReportBuilder(conn).totals(conn, "model", start, end)
    if not totals:
        return [ok("prices", f"no call recorded in the last {days} days")]
    found = []
    for row in totals:
        if row.unpriced_requests:
            provider, model = row.key1, row.key2
            found.append(
                problem(
                    "prices",
                    f"{provider}/{model}: {row.unpriced_requests} of {row.requests} calls in"
                    f" the last {days} days have no price",
                    f"check the name against `budget prices list --provider {provider}`, or"
                    " add it to price_overrides in config.yaml; then `budget reprice --since"
                    f" {start:%F} --until {reprice_until:%F}` prices them",
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
        int,
        typer.Option(
            min=1, max=3660, help="look this many days back for unpriced models and alerts given up"
        ),
    ] = 30,
) -> None:
    """Walk the troubleshooting list: configuration valid and enabled, NATS and PostgreSQL
    reachable, streams and consumers present, each projection's worker reading and its lag,
    the enforcer and the query service answering, alert rules and channels enabled,
    cooldowns holding alerts back, alerts a channel is failing to send, never tried or gave
    up on, models called without a price (read from the reports
    projection: not checked unless it is current). One line each (ok, note or problem, and
    how to fix a problem); exits 1 if a problem was found. With a `budget up` running on
    the data directory (BUDGET_DATA_DIR, .budget), its servers' URLs, NATS user and logs
    are what a fix names."""
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
