"""``budget doctor`` run beside a ``budget up`` on its data directory: the fix under a
server that does not answer is where the stack's servers are, or that the stack restarts
them, never to start what runs already."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
from collections.abc import Iterator

import test_cli
from test_cli import (
    UNREACHABLE_DATABASE,
    UNREACHABLE_NATS,
    Banner,
    Budget,
    Stack,
    eventually,
    parse_banner,
)
from test_doctor import doctor, lines_of

base_env, budget_up = test_cli.base_env, test_cli.budget_up  # `budget up` on a fresh data dir
WITHIN = 90.0  # for the stack to start and its workers to catch up


def started(stack: Stack) -> Banner:
    up = stack.service
    banner = eventually(
        lambda: parse_banner(up.output()),
        lambda b: b is not None or not up.running(),
        WITHIN,
        "budget up banner",
    )
    assert banner is not None, up.output()
    return banner


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """Process ``pid`` stopped (SIGSTOP): it holds its port and its socket but answers
    nothing, as a hung or unreachable server; continued afterwards."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_fix_points_at_the_stack_running_on_the_data_directory(
    budget_up: Stack, base_env: dict[str, str], nats_url: str, pg_schema_url: str
) -> None:
    banner = started(budget_up)
    data_dir = budget_up.data_dir
    runs = f"`budget up` (pid {budget_up.service.proc.pid}, data {data_dir})"
    cli = Budget({**base_env, "BUDGET_DATA_DIR": str(data_dir)}, data_dir.parent)
    export_nats = f"export BUDGET_NATS_URL={shlex.quote(banner.nats_url)}"
    export_database = f"export BUDGET_DATABASE_URL={shlex.quote(banner.database_url)}"

    # A shell without the banner's exports: the stack's addresses, not "start it".
    done = doctor(cli, BUDGET_NATS_URL=UNREACHABLE_NATS, BUDGET_DATABASE_URL=UNREACHABLE_DATABASE)
    assert done.returncode == 1
    [nats] = lines_of(done, "problem", "nats")
    assert nats.endswith(f" | {runs} runs NATS elsewhere: {export_nats}"), nats
    [database] = lines_of(done, "problem", "postgresql")
    assert database.endswith(f" | {runs} runs PostgreSQL elsewhere: {export_database}"), database

    # Other servers that answer: said, since every later line is about them.
    done = doctor(cli, BUDGET_NATS_URL=nats_url, BUDGET_DATABASE_URL=pg_schema_url)
    assert lines_of(done, "note", "nats") == [
        f"{nats_url} is not the NATS of {runs}, {banner.nats_url}: the checks below are of"
        f" the one reached | to check that stack: {export_nats}"
    ]
    assert lines_of(done, "note", "postgresql") == [
        f"{pg_schema_url} is not the PostgreSQL of {runs}, {banner.database_url}: the checks"
        f" below are of the one reached | to check that stack: {export_database}"
    ]

    # The stack's NATS without a user: the credential the banner names for `budget`.
    at_stack = {"BUDGET_NATS_URL": banner.nats_url, "BUDGET_DATABASE_URL": banner.database_url}
    done = doctor(cli, **at_stack)
    password = data_dir / "credentials" / "nats-service.password"
    assert lines_of(done, "problem", "nats") == [
        f"NATS at {banner.nats_url} refused the credential (no user) | as an admin of {runs}:"
        f" export BUDGET_NATS_USER=service BUDGET_NATS_PASSWORD_FILE={password}"
    ]

    # As the stack's host user, which may not read the streams: the admin credential.
    host = data_dir / "credentials" / "nats-host.password"
    done = doctor(cli, **at_stack, BUDGET_NATS_USER="host", BUDGET_NATS_PASSWORD_FILE=str(host))
    [streams] = lines_of(done, "problem", "streams")
    assert streams.endswith(
        f" | as an admin of {runs}: export BUDGET_NATS_USER=service"
        f" BUDGET_NATS_PASSWORD_FILE={password}"
    ), streams

    # Its servers hung: the stack restarts them, and their logs say why.
    at_stack.update(BUDGET_NATS_USER="service", BUDGET_NATS_PASSWORD_FILE=str(password))
    eventually(lambda: doctor(cli, **at_stack), lambda d: d.returncode == 0, WITHIN, "all ok")
    state = json.loads((data_dir / "stack.json").read_text())
    restarts = f"{runs} runs it and restarts it within a second when it dies; if it stays"
    with stopped(state["postgres_pid"]):
        done = doctor(cli, **at_stack)
    [database] = lines_of(done, "problem", "postgresql")
    assert database.startswith(f"cannot reach PostgreSQL at {banner.database_url} ("), database
    assert database.endswith(
        f" | {restarts} unreachable, its log says why: {data_dir}/postgres/log (and `budget"
        " up`'s output)"
    ), database
    assert "start `budget" not in done.stdout, done.stdout
    with stopped(state["nats_pid"]):
        done = doctor(cli, **at_stack)
    [nats] = lines_of(done, "problem", "nats")
    assert nats.startswith(f"cannot reach NATS at {banner.nats_url} ("), nats
    assert nats.endswith(
        f" | {restarts} unreachable, its log says why: {data_dir}/nats/nats-server.log (and"
        " `budget up`'s output)"
    ), nats
