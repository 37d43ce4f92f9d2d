"""The ``budget`` command."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import psycopg
import typer
from nats.errors import Error as NatsError
from psycopg import errors as pg_errors
from pydantic import ValidationError
from tqdm import tqdm
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from budget.commands import ClockAhead
from budget.config import ConfigError, shown_url
from budget.periods import Period
from budget.publisher import EventPublisher, NotStored
from budget.queries import NotApplied
from budget.redaction import install_redaction, redact, secrets_of
from budget.report_format import shown_money
from budget.usage import normalize_usage
from events import BudgetScope, utc_now
from events.usage import MAX_TOKENS, exact_money
from projections.engine.log import LogError
from projections.engine.reader import ConsumerGone
from projections.engine.rebuild import Progress, rebuild
from projections.engine.runner import EngineConfig, Retired, Systemic
from projections.queries import projection_status, spend_for_period
from projections.readable import Rebuilding
from projections.registry import GROUPS, PROJECTIONS, get_projection, worker_projections
from projections.windows import priced_cost
from services.cli_alerts import alerts_app
from services.cli_context import (
    load_checked_settings,
    option_message,
    query_time_option,
    require_nats,
    settings,
    tracker,
    use_settings,
    validation_message,
)
from services.cli_keys import keys_app
from services.cli_nats import nats_app
from services.cli_policies import check, policy_app
from services.cli_prices import app as prices_app
from services.cli_reports import report_app
from services.cli_spool import spool_app
from services.doctor import doctor
from services.embedded import ServerStartError
from services.ops import ConnectError, database, nats_client, prepare
from services.stack import StackError

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    help="Budget Manager: cost tracking and budget enforcement for AI provider calls.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
projections_app = typer.Typer(help="Inspect and rebuild projections (read models).")
app.add_typer(projections_app, name="projections")
app.add_typer(prices_app, name="prices", help="Look up model prices and where they come from.")
app.add_typer(policy_app, name="policy", help="Set, list, show and delete budget policies.")
app.command()(check)
app.add_typer(alerts_app, name="alerts", help="List, show, acknowledge, resolve and watch alerts.")
app.add_typer(report_app, name="report", help="Reports, forecasts and usage history.")
app.add_typer(keys_app, name="api-key", help="Create, list and revoke HTTP API keys.")
app.add_typer(nats_app, name="nats-credential", help="Add, remove, list NATS users.")
app.add_typer(
    spool_app, name="spool", help="Show a host's spool and dead letters; send them again."
)
app.command()(doctor)


# Commands that run until stopped: their log is their output.
_SERVICES = frozenset({"up", "api", "worker", "enforcer", "notifier", "query-service"})


@app.callback()
def _configure(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(help="config.yaml to read (default: $BUDGET_CONFIG or ./config.yaml)"),
    ] = None,
) -> None:
    if ctx.invoked_subcommand not in _SERVICES:
        # A command answers in its output or one error line; library warnings on the way
        # (a NATS reconnect, spooling) would make that error several lines.
        logging.lastResort = logging.NullHandler()
    if ctx.invoked_subcommand == "doctor":
        ctx.obj = config  # a wrong configuration is one of the problems it reports
        return
    loaded = load_checked_settings(config)
    install_redaction(secrets_of(loaded))  # this process's logs and tracebacks never show them
    use_settings(loaded)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@app.command()
def up(
    data_dir: Annotated[
        Path | None, typer.Option(help="where NATS and PostgreSQL keep data (default .budget)")
    ] = None,
    nats_port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="NATS client port (default: a free one, kept across runs)"
        ),
    ] = None,
    api_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="web console and HTTP API port (default: a free one, kept across runs)",
        ),
    ] = None,
) -> None:
    """Run the whole stack on this machine, no Docker: NATS JetStream, PostgreSQL, every
    worker, the enforcer, the notifier, the query service and the web console with its
    HTTP API. On first start it creates an admin API key, the NATS users' passwords
    (service, host, alerts, admin, api, enforcer, notifier, query) and the metrics token
    in the data directory; NATS takes no anonymous client. Each process serves Prometheus
    metrics on its own port of 127.0.0.1 to scrapers bearing that token, listed in the
    banner and in <data-dir>/metrics-targets.json; <data-dir>/prometheus.yml is a
    Prometheus config that scrapes them all with it. A worker, NATS or PostgreSQL that
    dies is restarted (the servers on the same address with their data), and so is a
    worker alive but hung (its event loop blocked or a loop stuck for restart_hung_after
    seconds, 60 by default; not one waiting for a server to come back), each logged.
    Stops cleanly on Ctrl-C."""
    from events.permissions import OWN_USERS
    from services.api.keys import first_admin_key
    from services.nats_config import NatsCredentials, stack_client_tls, write_config
    from services.ports import require_free
    from services.stack import (
        STACK_WORKERS,
        kept_port,
        lock_data_dir,
        reap_leftovers,
        run_stack,
    )
    from services.stack_metrics import (
        banner_lines,
        metrics_ports,
        metrics_token_file,
        worker_env,
        write_prometheus_config,
    )

    if nats_port is not None and nats_port == api_port:
        raise ValueError(f"--nats-port and --api-port are both {nats_port}: give them two ports")
    current = settings()
    directory = (data_dir or current.data_dir).absolute()
    # Held before a port or a file is chosen, so a refused second stack changes nothing;
    # run_stack releases it when the stack stops.
    lock = lock_data_dir(directory)
    reap_leftovers(directory)  # a crashed stack's NATS and api would hold their ports
    for chosen, option in ((nats_port, "--nats-port"), (api_port, "--api-port")):
        if chosen is not None:  # else a free one is chosen
            require_free("127.0.0.1", chosen, option)
    key_file = directory / "admin.key"
    # Neither the port of the other (one run's NATS port may be free for another's console).
    port = api_port or kept_port(directory / "api-port", [nats_port] if nats_port else [])
    # Chosen before any server starts, so no metrics port can be the one NATS then takes.
    nats_port = nats_port or kept_port(directory / "nats" / "last-port", [port])
    metrics = metrics_ports(directory, STACK_WORKERS, taken=[port, nats_port])
    metrics_token = metrics_token_file(directory)
    nats_tls = stack_client_tls(current)
    nats_config = write_config(directory, current)
    credentials = NatsCredentials(directory)
    service = credentials.settings_for("service", current)
    own_env = worker_env(metrics, metrics_token)
    # The HTTP API, the enforcer, the notifier and the query service connect to NATS as
    # their own users; the others as `service` (extra_env).
    for process, user in OWN_USERS.items():
        own_env[process] = {**own_env.get(process, {}), **credentials.env(user)}

    async def prepare_stack(nats_url: str, database_url: str) -> None:
        # As the admin: it declares the streams, which the services' credential may not.
        await prepare(nats_url, database_url, credentials.settings_for("admin", current))
        # once the data directory is this stack's
        write_prometheus_config(directory, metrics, metrics_token)
        async with nats_client(nats_url, service) as nc:
            await first_admin_key(nc.jetstream(), current.topology, key_file)

    raise typer.Exit(
        run_stack(
            directory,
            STACK_WORKERS,
            prepare=prepare_stack,
            nats_port=nats_port,
            nats_config=nats_config,
            nats_tls=nats_tls,
            hang_after=current.restart_hung_after,
            extra_env={
                "BUDGET_API_PORT": str(port),
                "BUDGET_DATA_DIR": str(directory),
                **credentials.env("service"),
            },
            worker_env=own_env,
            notes=[
                f"web console       http://127.0.0.1:{port}/  (HTTP API under /api/v1)",
                f"admin API key     in {key_file} (sign in with it; make others there)",
                *credentials.notes(current.topology),
                *banner_lines(directory, metrics, metrics_token),
            ],
            locked=lock,
        )
    )


@app.command()
def api(
    host: Annotated[
        str, typer.Option(envvar="BUDGET_API_HOST", help="address to listen on")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="BUDGET_API_PORT", min=1, max=65535, help="port to listen on")
    ] = 8080,
    secure_cookies: Annotated[
        bool, typer.Option(help="mark console cookies HTTPS-only (behind a TLS proxy)")
    ] = False,
) -> None:
    """Serve the web console and the HTTP API (/api/v1, OpenAPI at /api/v1/openapi.json)
    until SIGTERM. Every request needs an API key (`budget api-key create`) or a console
    session; there is no unauthenticated mode."""
    from services.api.server import serve_api
    from services.ports import require_free, require_metrics_port

    current = settings()
    require_free(host, port, "--port (or BUDGET_API_PORT)", "--host (or BUDGET_API_HOST)")
    require_metrics_port(current)
    raise typer.Exit(serve_api(current, host=host, port=port, secure_cookies=secure_cookies))


@app.command("migrate")
def migrate_command() -> None:
    """Apply database migrations and declare the JetStream streams (idempotent: safe on
    every start; `budget up` does it). Making or changing a stream takes the NATS admin
    credential: under `budget up`, BUDGET_NATS_USER=admin and
    BUDGET_NATS_PASSWORD_FILE=<data dir>/credentials/nats-admin.password."""
    current = settings()
    _run(prepare(current.nats_url, current.database_url, current))
    typer.echo("database migrated; streams declared")


@app.command()
def worker(
    name: Annotated[
        str,
        typer.Argument(
            help="a group of projections sharing one consumer ("
            + "; ".join(f"{g}: {', '.join(m)}" for g, m in GROUPS.items())
            + f") or one projection: {', '.join(PROJECTIONS)}"
        ),
    ],
) -> None:
    """Run one consumer against BUDGET_NATS_URL / BUDGET_DATABASE_URL until SIGTERM. A
    group applies each batch to all its projections in one transaction; running its
    projections one per worker instead works too (never both at once for one projection:
    the second waits as a hot standby)."""
    from services.worker import run_worker

    worker_projections(name)
    raise typer.Exit(run_worker(name, settings()))


@app.command()
def enforcer() -> None:
    """Run the enforcer (pre-call checks for BLOCK/THROTTLE policies, reservations) until
    SIGTERM. Several may run; they share the requests."""
    from services.enforcer import serve_enforcer
    from services.worker import run_service

    raise typer.Exit(run_service("enforcer", settings(), serve_enforcer))


@app.command()
def notifier() -> None:
    """Send raised alerts on their channels (NATS, log, UI feed, webhook, email) until
    SIGTERM. Several may run: one sends per channel, the others stand by."""
    from services.notifier import serve_notifier
    from services.worker import run_service

    raise typer.Exit(run_service("notifier", settings(), serve_notifier, prices=False))


@app.command("query-service")
def query_service() -> None:
    """Answer the Python API's questions (policies, spend, alerts, reports) from the
    projections until SIGTERM, so host apps need NATS access only. Several may run."""
    from services.query_service import serve_query_service
    from services.worker import run_service

    raise typer.Exit(run_service("query-service", settings(), serve_query_service))


def _tokens(help: str) -> Any:
    """A token count option, held to the contract's range: one out of it is refused naming
    the option, not the event field it would have become."""
    return typer.Option(min=0, max=MAX_TOKENS, help=help)


@app.command()
def record(
    model: Annotated[str, typer.Option(help="model id, e.g. gpt-4o")],
    provider: Annotated[str, typer.Option(help="provider, e.g. openai")],
    input_tokens: Annotated[int, _tokens("all input tokens, cached included")] = 0,
    output_tokens: Annotated[int, _tokens("all output tokens, reasoning included")] = 0,
    cached_tokens: Annotated[int, _tokens("input tokens read from cache")] = 0,
    cache_write_tokens: Annotated[int, _tokens("input tokens written to cache")] = 0,
    reasoning_tokens: Annotated[int, _tokens("output tokens spent reasoning")] = 0,
    user: Annotated[str | None, typer.Option(help="user id")] = None,
    project: Annotated[str | None, typer.Option(help="project id")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable")] = None,
    at: Annotated[
        datetime | None, typer.Option(help="time of the call, ISO 8601 (default now, UTC)")
    ] = None,
) -> None:
    """Publish one usage event from the shell and print it with its cost once JetStream
    has acknowledged it. Fails (exit 2) when NATS is unreachable, recording nothing; an
    event NATS does not acknowledge stays in the spool and the next `budget record` sends
    it (if the spool cannot keep it either, it fails, recording nothing)."""
    tags = dict(_split_tag(t) for t in tag or [])
    occurred_at = None if at is None else _within_bounds(_utc(at))
    normalize_usage(  # wrong counts are refused before connecting
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached_tokens,
        cache_write_tokens=cache_write_tokens,
        reasoning_tokens=reasoning_tokens,
    )

    async def go() -> str:
        async with tracker() as started:
            publisher = started.publisher
            assert isinstance(publisher, EventPublisher)  # a CLI tracker publishes
            require_nats(publisher, "nothing was recorded")
            await publisher.resend_spool()  # what an earlier run could not send
            event = await started.record_usage(
                model=model,
                provider=provider,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_tokens=cached_tokens,
                cache_write_tokens=cache_write_tokens,
                reasoning_tokens=reasoning_tokens,
                user_id=user,
                project_id=project,
                tags=tags,
                occurred_at=occurred_at,
            )
            try:
                await started.flush()
            except NotStored:
                raise ConnectError(
                    f"NATS at {shown_url(publisher.config.nats_url)} did not acknowledge the"
                    " event (has `budget migrate` declared its stream?) and the spool"
                    f" ({publisher.config.spool_dir}) did not take it; nothing was recorded:"
                    " make the spool directory (BUDGET_SPOOL_DIR) writable"
                ) from None
            if len(publisher.spool):
                raise ConnectError(
                    f"NATS at {shown_url(publisher.config.nats_url)} did not acknowledge the"
                    " event (has `budget migrate` declared its stream?); it waits in the spool"
                    f" ({publisher.config.spool_dir}) and the next `budget record` that is"
                    " acknowledged sends it"
                )
        return event.model_dump_json(indent=2, exclude_none=True)

    typer.echo(_run(go()))


_BOUNDS_NAMED = {
    "occurred_at": "--at",
    "max_clock_skew": "max_clock_skew, BUDGET_MAX_CLOCK_SKEW",
    "max_event_age": "max_event_age, BUDGET_MAX_EVENT_AGE",
}
"""The names in a time bound's complaint, as `budget record`'s user knows them."""


def _within_bounds(at: datetime) -> datetime:
    """``at``, refused before connecting if the workers would dead-letter a call then
    (``Settings.time_bounds``)."""
    why = settings().time_bounds.time_violation(at, utc_now())
    if why is not None:
        raise ValueError(
            option_message("occurred_at", why.removeprefix("occurred_at: "), _BOUNDS_NAMED)
        )
    return at


def _split_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--tag {text!r} must look like KEY=VALUE")
    return key, value


@app.command()
def spend(
    period: Annotated[Period, typer.Option(help="calendar period (UTC)")] = Period.MONTHLY,
    scope: Annotated[BudgetScope | None, typer.Option(help="only this scope (default all)")] = None,
    at: Annotated[
        datetime | None, typer.Option(help="a time inside the period (default now)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """Print the current period's spend totals by scope."""
    instant = query_time_option(_utc(at), "--at") if at else utc_now()

    async def go() -> None:
        async with database(settings().database_url) as conn:
            rows = await spend_for_period(conn, period, instant, scope and scope.value)
        if as_json:
            for r in rows:
                typer.echo(json.dumps({**r.__dict__, "cost": str(r.cost)}, default=str))
            return
        if not rows:
            typer.echo(f"no usage recorded in the {period.value} period containing {instant:%F}")
            return
        typer.echo(f"{period.value} period from {rows[0].period_start} (UTC)")
        typer.echo(f"{'scope':<9} {'key':<28} {'cost USD':>14} {'requests':>9} {'unpriced':>8}")
        for r in rows:
            # A key whose every call was unpriced has no amount (its sum is 0), never "0.00".
            priced = priced_cost(r.cost, r.requests, r.unpriced_requests)
            cost = "unpriced" if priced is None else shown_money(priced)
            typer.echo(
                f"{r.scope:<9} {r.scope_key[:28]:<28} {cost:>14} {r.requests:>9}"
                f" {r.unpriced_requests:>8}"
            )

    _run(go())


@app.command()
def reprice(
    since: Annotated[datetime, typer.Option(help="first call time to reprice (ISO 8601, UTC)")],
    until: Annotated[datetime, typer.Option(help="end of the window, exclusive")],
    dry_run: Annotated[bool, typer.Option(help="list the changes without publishing")] = False,
    reason: Annotated[str, typer.Option(help="recorded on each correction")] = "budget reprice",
) -> None:
    """Recompute costs of usage in [SINCE, UNTIL) with the current price data (after a
    price fix or a new override) and append a correction event for each changed cost;
    the projections that count usage apply them. Lists what changed."""
    from budget.pricing import get_pricing_registry
    from budget.publisher import PublisherConfig
    from projections.queries import usage_between
    from services.reprice import plan_corrections, publish_corrections

    current = settings()
    start, end = _utc(since), _utc(until)
    if end <= start:
        raise ValueError(f"--until ({end:%F %T}) must be after --since ({start:%F %T})")

    async def go() -> None:
        registry = await get_pricing_registry(current.price_overrides)
        async with database(current.database_url) as conn:
            recorded = await usage_between(conn, start, end)
        changes = plan_corrections(recorded, registry, reason)
        for change in changes:
            u = change.usage
            typer.echo(
                f"{u.occurred_at:%F %T} {u.provider}/{u.model} {u.event_id}:"
                f" {_money(u.cost)} -> {_money(change.correction.cost)}"
            )
        with exact_money():
            total = sum((c.delta for c in changes), Decimal(0))
        verb = "would change" if dry_run else "changed"
        typer.echo(f"{len(recorded)} events checked, {len(changes)} {verb}, delta {total:+} USD")
        if changes and not dry_run:
            publisher = EventPublisher(PublisherConfig.from_settings(current))
            await publisher.start()
            try:
                require_nats(publisher, "nothing was published")
                await publish_corrections(publisher, changes)
            finally:
                await publisher.close()

    _run(go())


def _money(value: Decimal | None) -> str:
    return "unpriced" if value is None else f"${value}"


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@projections_app.command("status")
def projections_status() -> None:
    """Each projection version's checkpoint, lag and newest event time."""
    current = settings()

    async def go() -> None:
        async with (
            nats_client(current.nats_url, current) as nc,
            database(current.database_url) as conn,
        ):
            rows = await projection_status(conn, nc.jetstream(), current.topology)
        header = ("projection", "ver", "state", "checkpoint", "lag", "newest event")
        typer.echo("{:<12} {:>4} {:<9} {:>11} {:>9}  {}".format(*header))
        for s in rows:
            newest = s.newest_event_at.isoformat() if s.newest_event_at else "-"
            state = "live" if s.live else "building"
            typer.echo(
                f"{s.name:<12} {s.version:>4} {state:<9} {s.checkpoint:>11} {s.lag:>9}  {newest}"
            )

    _run(go())


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[str, typer.Argument(help=f"projection: {', '.join(PROJECTIONS)}")],
    swap: Annotated[
        bool, typer.Option(help="make the new version live when caught up (else keep both)")
    ] = True,
) -> None:
    """Rebuild a projection from the first event into a new version, beside the live one,
    then swap atomically. Workers keep running and follow the swap."""
    from services.worker import tune_gc

    current = settings()
    projection = get_projection(name)
    tune_gc()

    async def go() -> int:
        bar = tqdm(unit="ev", unit_scale=True, desc=f"rebuild {name}", file=sys.stderr)

        def show(progress: Progress) -> None:
            bar.total = progress.total
            bar.n = progress.done
            bar.refresh()

        async with nats_client(current.nats_url, current) as nc:
            try:
                return await rebuild(
                    projection,
                    nc=nc,
                    database_url=current.database_url,
                    topology=current.topology,
                    on_progress=show,
                    swap=swap,
                    config=EngineConfig(time_bounds=current.time_bounds),
                )
            finally:
                bar.close()

    version = _run(go())
    typer.echo(f"{name} version {version} " + ("is live" if swap else "built (not live)"))


def main() -> None:
    """Entry point: a wrong argument, setting or unreachable server, or a rebuild that
    stopped, prints one line to stderr and exits 2."""
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError:
        typer.echo(app_help(), err=True)
        sys.exit(2)
    except typer.TyperException as exc:  # click's usage errors: bad option, missing value
        message = exc.format_message() if isinstance(exc, ClickException) else str(exc)
        _fail(f"{message.replace('Value error, ', '')} (see --help)")
    except ValidationError as exc:
        _fail(validation_message(exc))
    except (
        ConfigError,
        ConnectError,
        LogError,
        ValueError,
        NotApplied,
        ClockAhead,
        Rebuilding,
    ) as exc:
        _fail(str(exc))
    except (StackError, ServerStartError) as exc:  # `budget up`: e.g. a stack already runs
        _fail(str(exc))
    except Retired as exc:  # a rebuild overtaken by a newer one's swap, which it says
        _fail(str(exc))
    except Systemic as exc:  # a rebuild's projection failed on every event
        _fail(f"{exc}; the rebuild stopped and dropped its version: fix the projection and rerun")
    except ConsumerGone as exc:
        _fail(f"{exc}: deleted while the rebuild read it; it stopped and dropped its version")
    except pg_errors.UndefinedTable:
        _fail("the database has no Budget Manager tables yet; run `budget migrate` first")
    except ConnectionError as exc:
        _fail(f"{exc}; start NATS with `budget up` or set BUDGET_NATS_URL")
    except NatsError as exc:
        _fail(
            f"NATS at {shown_url(settings().nats_url)} did not answer ({exc}); is `budget up`"
            " (or `budget migrate` and the workers) running there?"
        )
    except OSError as exc:  # a file the command reads or writes (connection errors above)
        _fail(str(exc))
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(
            f"cannot reach PostgreSQL ({first}); start it with `budget up` or set"
            " BUDGET_DATABASE_URL"
        )
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> NoReturn:
    typer.echo(f"budget: {' '.join(redact(message).split())}", err=True)
    sys.exit(2)


def _summaries_on_one_line(group: typer.Typer) -> None:
    """Each command's summary in a group's command list as one paragraph: rich markup
    keeps a docstring's single line breaks there (not in the command's own help), which
    broke the list's lines mid-column."""
    for info in group.registered_commands:
        if info.short_help is None and info.help is None and info.callback is not None:
            first = inspect.cleandoc(info.callback.__doc__ or "").split("\n\n")[0]
            info.short_help = " ".join(first.split()) or None
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _summaries_on_one_line(sub.typer_instance)


_summaries_on_one_line(app)


def app_help() -> str:
    command = typer.main.get_command(app)
    with command.make_context("budget", [], resilient_parsing=True) as ctx:
        return command.get_help(ctx)


if __name__ == "__main__":
    main()
