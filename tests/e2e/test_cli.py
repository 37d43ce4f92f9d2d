"""The ``budget`` command end to end, run as a user runs it: ``python -m services.cli ...``
as a child process, configured only by ``BUDGET_*`` variables, against real NATS JetStream
and PostgreSQL (a fresh subject prefix and schema per test), and ``budget up`` for real.

Waits are bounded (a worker has to catch up, a stack has to start) but never asserted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import httpx
import nats
import psutil  # type: ignore[import-untyped,unused-ignore]
import psycopg
import pytest
from nats.js.errors import NotFoundError

from budget.periods import Period
from budget.policies import DEFAULT_USER_POLICY_ID
from events import Event, Topology, UsageRecorded
from events.permissions import OWN_USERS
from projections.engine.projection import physical
from projections.registry import PROJECTIONS
from services.database_roles import DOOR_ROLES
from services.stack import STACK_WORKERS

from support import ROOT, publish, start_of, usage_event

T = TypeVar("T")

CLI = (sys.executable, "-m", "services.cli")
RUN_TIMEOUT = 60.0  # a command that has not exited by then hangs
CATCH_UP = 30.0  # how long a worker may take to apply what was recorded
UNREACHABLE_NATS = "nats://127.0.0.1:1"
UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:1/budget"
GPT_4O_CALL = (
    "--model",
    "gpt-4o",
    "--provider",
    "openai",
    "--input-tokens",
    "1000",
    "--cached-tokens",
    "200",
    "--output-tokens",
    "500",
    "--user",
    "alice",
)


# -- running the command ---------------------------------------------------------------------


@dataclass
class Budget:
    """The ``budget`` command with a fixed environment; remembers the long-running processes
    it started so the fixture can stop whatever a failing test left behind."""

    env: dict[str, str]
    logs: Path
    started: list[Service] = field(default_factory=list)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``budget ARGS`` with ``env`` on top of this environment; fails if it hangs."""
        return subprocess.run(
            [*CLI, *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    def ok(self, *args: str, **env: str) -> str:
        """Run ``budget ARGS``, require exit 0, return stdout."""
        done = self.run(*args, **env)
        assert done.returncode == 0, f"budget {' '.join(args)} exited {done.returncode}:\n" + (
            done.stdout + done.stderr
        )
        return done.stdout

    def start(self, *args: str, **env: str) -> Service:
        """``budget ARGS`` in the background, output to a log file."""
        log = self.logs / f"{'-'.join(a.strip('-') for a in args[:2])}.{len(self.started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*CLI, *args],
                cwd=ROOT,
                env={**self.env, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        service = Service(proc, log)
        self.started.append(service)
        return service

    def record(self, *args: str) -> dict[str, Any]:
        """``budget record ARGS``; the event it printed."""
        event: dict[str, Any] = json.loads(self.ok("record", *args))
        return event

    def spend(self, at: str, *args: str) -> list[dict[str, Any]]:
        """``budget spend --json --at AT ARGS``, one dict per line."""
        out = self.ok("spend", "--json", "--at", at, *args)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def status(self) -> list[StatusRow]:
        """``budget projections status``, parsed."""
        lines = self.ok("projections", "status").splitlines()
        assert lines and lines[0].split()[:5] == ["projection", "ver", "state", "checkpoint", "lag"]
        return [StatusRow.parse(line) for line in lines[1:] if line.strip()]

    def stop_all(self) -> None:
        for service in self.started:
            if service.proc.poll() is None:
                service.proc.kill()
                service.proc.wait()


@dataclass
class Service:
    """A long-running ``budget`` command (a worker, ``budget up``) and its log."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, signum: int = signal.SIGTERM, grace: float = 30.0) -> int:
        """Signal it as a service manager (or Ctrl-C) would; its exit code. Killed, and
        an error, if it is still running after ``grace`` seconds."""
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"still running {grace:.0f}s after {signum!r}:\n" + self.output()
            ) from None


@dataclass(frozen=True)
class StatusRow:
    name: str
    version: int
    state: str
    checkpoint: int
    lag: int

    @classmethod
    def parse(cls, line: str) -> StatusRow:
        name, version, state, checkpoint, lag, _newest = line.split()
        return cls(name, int(version), state, int(checkpoint), int(lag))


def eventually(probe: Callable[[], T], ok: Callable[[T], bool], within: float, what: str) -> T:
    """Call ``probe`` until ``ok(result)``; the result, or an error showing the last one."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if ok(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f}s; last saw {result!r}")
        time.sleep(0.2)


def global_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in rows if r["scope"] == "global"), None)


# -- fixtures --------------------------------------------------------------------------------


def clean_env(tmp: Path) -> dict[str, str]:
    """The caller's environment without any ``BUDGET_*`` variable, an empty config file (so
    a ``config.yaml`` in the checkout does not leak in), a private spool and data directory
    (so a ``budget up`` running on the checkout's ``.budget`` is not the doctor's)."""
    config = tmp / "config.yaml"
    config.write_text("budget: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    env.update(
        BUDGET_CONFIG=str(config),
        BUDGET_SPOOL_DIR=str(tmp / "spool"),
        BUDGET_DATA_DIR=str(tmp / "data"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path)


@pytest.fixture
def budget(
    base_env: dict[str, str],
    tmp_path: Path,
    nats_url: str,
    pg_schema_url: str,
    topology: Topology,
) -> Iterator[Budget]:
    """``budget`` pointed at the session servers, this test's schema and subject prefix.
    Afterwards: whatever it started is stopped and this prefix's streams are deleted."""
    env = {
        **base_env,
        "BUDGET_NATS_URL": nats_url,
        "BUDGET_DATABASE_URL": pg_schema_url,
        "BUDGET_SUBJECT_PREFIX": topology.prefix,
    }
    cli = Budget(env, tmp_path)
    try:
        yield cli
    finally:
        cli.stop_all()
        asyncio.run(delete_streams(nats_url, topology))


@pytest.fixture
def deployment(budget: Budget) -> Budget:
    """``budget`` after ``budget migrate``."""
    budget.ok("migrate")
    return budget


async def delete_streams(nats_url: str, topology: Topology) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for spec in (topology.event_stream, topology.dead_letter_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(spec.name)
    finally:
        await nc.close()


async def stream_subjects(nats_url: str, topology: Topology) -> dict[str, list[str]]:
    """Each of this topology's streams that exists, with its subjects."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        found = {}
        for spec in (topology.event_stream, topology.dead_letter_stream):
            with contextlib.suppress(NotFoundError):
                info = await js.stream_info(spec.name)
                found[spec.name] = sorted(info.config.subjects or ())
        return found
    finally:
        await nc.close()


async def publish_events(nats_url: str, topology: Topology, events: Sequence[Event]) -> None:
    nc = await nats.connect(nats_url)
    try:
        await publish(nc, topology, events)
    finally:
        await nc.close()


def expected_relations() -> set[str]:
    """What a migrated database has: the engine's tables, each projection's version-1
    tables and its views under the plain names."""
    names = {"projection_registry", "projection_checkpoints"}
    for projection in PROJECTIONS.values():
        names.update(physical(table, 1) for table in projection.tables)
        names.update(projection.views(1))
    return names


def existing_relations(database_url: str, names: set[str]) -> set[str]:
    """Those of ``names`` that exist in the URL's schema (its search_path)."""
    with psycopg.connect(database_url) as conn:
        found = {n: conn.execute("SELECT to_regclass(%s)", (n,)).fetchone() for n in names}
    return {n for n, row in found.items() if row is not None and row[0] is not None}


def caught_up(database_url: str, names: Sequence[str], seq: int) -> Callable[[], dict[str, int]]:
    """A probe: the live version's checkpoint of each of ``names`` (polled until ``seq``)."""

    def probe() -> dict[str, int]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT c.name, c.stream_seq FROM projection_checkpoints c"
                " JOIN projection_registry r"
                " ON r.name = c.name AND r.active_version = c.version"
            ).fetchall()
        return {name: int(s) for name, s in rows if name in names}

    return probe


def wait_caught_up(
    database_url: str,
    names: Sequence[str],
    seq: int,
    *workers: Service,
    within: float = CATCH_UP,
) -> None:
    """Until the live version of each of ``names`` has applied stream sequence ``seq``; on
    failure, shows the ``workers``' logs."""
    try:
        eventually(
            caught_up(database_url, names, seq),
            lambda cps: len(cps) == len(names) and all(s >= seq for s in cps.values()),
            within,
            f"{', '.join(names)} at stream sequence {seq}",
        )
    except AssertionError as exc:
        logs = "".join(f"\n--- {w.log.name}\n{w.output()}" for w in workers)
        raise AssertionError(f"{exc}{logs}") from None


# -- budget migrate --------------------------------------------------------------------------


def test_migrate_creates_the_streams_and_tables(
    budget: Budget, nats_url: str, pg_schema_url: str, topology: Topology
) -> None:
    assert {"spend_totals", "usage_history"} <= expected_relations()  # what users query
    assert asyncio.run(stream_subjects(nats_url, topology)) == {}
    assert existing_relations(pg_schema_url, expected_relations()) == set()

    out = budget.ok("migrate")

    assert "migrated" in out
    assert asyncio.run(stream_subjects(nats_url, topology)) == {
        topology.event_stream.name: sorted(topology.event_stream.subjects),
        topology.dead_letter_stream.name: sorted(topology.dead_letter_stream.subjects),
    }
    assert existing_relations(pg_schema_url, expected_relations()) == expected_relations()


def test_migrate_is_idempotent(
    deployment: Budget, nats_url: str, pg_schema_url: str, topology: Topology
) -> None:
    streams = asyncio.run(stream_subjects(nats_url, topology))

    again = deployment.run("migrate")

    assert again.returncode == 0, again.stdout + again.stderr
    assert asyncio.run(stream_subjects(nats_url, topology)) == streams
    assert existing_relations(pg_schema_url, expected_relations()) == expected_relations()


# -- record, workers, spend, status ----------------------------------------------------------


def test_recorded_cost_reaches_spend_and_status_through_running_workers(
    deployment: Budget, pg_schema_url: str
) -> None:
    event = deployment.record(*GPT_4O_CALL)
    cost = Decimal(event["cost"])
    assert cost > 0

    workers = {name: deployment.start("worker", name) for name in ("spend", "history")}
    wait_caught_up(pg_schema_url, list(workers), 1, *workers.values())

    totals = global_row(deployment.spend(event["occurred_at"]))
    assert totals is not None
    assert Decimal(totals["cost"]) == cost
    assert (totals["requests"], totals["unpriced_requests"]) == (1, 0)
    user = deployment.spend(event["occurred_at"], "--scope", "user")
    assert [(r["scope_key"], Decimal(r["cost"])) for r in user] == [("alice", cost)]

    status = eventually(
        deployment.status,
        lambda rows: all(r.lag == 0 for r in rows if r.name in workers),
        CATCH_UP,
        "projections status with lag 0",
    )
    assert sorted((r.name, r.version, r.state, r.checkpoint, r.lag) for r in status) == [
        ("alerts", 1, "live", 0, 1),  # not running: the usage event waits for it
        ("api_keys", 1, "live", 0, 0),  # not running, and nothing on its subjects
        ("history", 1, "live", 1, 0),
        ("policies", 1, "live", 0, 0),  # not running, and nothing on its subjects
        ("reports", 1, "live", 0, 1),
        ("spend", 1, "live", 1, 0),
    ]

    for name, worker in workers.items():
        assert worker.stop() == 0, f"worker {name}:\n{worker.output()}"


def test_record_publishes_only_what_nats_acknowledges_and_leaves_nothing_unsent(
    budget: Budget, nats_url: str, topology: Topology
) -> None:
    unreachable = budget.run("record", *GPT_4O_CALL, BUDGET_NATS_URL=UNREACHABLE_NATS)
    assert (unreachable.returncode, unreachable.stdout) == (2, ""), unreachable
    [line] = unreachable.stderr.splitlines()
    assert line.startswith(f"budget: cannot reach NATS at {UNREACHABLE_NATS}"), line
    assert "nothing was recorded" in line
    no_stream = budget.run("record", *GPT_4O_CALL)  # before `budget migrate`
    assert (no_stream.returncode, no_stream.stdout) == (2, ""), no_stream
    [line] = no_stream.stderr.splitlines()
    assert "did not acknowledge the event (has `budget migrate` declared its stream?)" in line
    budget.ok("migrate")
    budget.record(*GPT_4O_CALL)  # and the one that waited in the spool
    assert asyncio.run(stored_events(nats_url, topology)) == 2


def test_record_that_nats_refuses_and_the_spool_cannot_keep_ends_saying_so(
    budget: Budget, tmp_path: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    done = budget.run(  # before `budget migrate`: NATS acknowledges nothing
        "record", *GPT_4O_CALL, BUDGET_SPOOL_DIR=str(a_file / "spool"), BUDGET_ACK_TIMEOUT="1"
    )
    assert (done.returncode, done.stdout) == (2, ""), done
    [line] = done.stderr.splitlines()
    assert line.endswith(
        f"did not acknowledge the event (has `budget migrate` declared its stream?) and the"
        f" spool ({a_file / 'spool'}) did not take it; nothing was recorded: make the spool"
        " directory (BUDGET_SPOOL_DIR) writable"
    ), line


async def stored_events(nats_url: str, topology: Topology) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(topology.event_stream.name)
        return int(info.state.messages)
    finally:
        await nc.close()


def test_the_spend_table_shows_money_as_reports_do_sub_cent_amounts_in_full(
    deployment: Budget, pg_schema_url: str
) -> None:
    worker = deployment.start("worker", "spend")
    event = deployment.record("--model", "gpt-4o", "--provider", "openai", "--input-tokens", "1")
    assert Decimal(event["cost"]) == Decimal("0.0000025")
    wait_caught_up(pg_schema_url, ["spend"], 1, worker)
    table = deployment.ok("spend", "--at", event["occurred_at"])
    [line] = [line for line in table.splitlines() if line.startswith("global ")]
    cost, requests, unpriced = line.split()[-3:]
    assert (Decimal(cost), requests, unpriced) == (Decimal("0.0000025"), "1", "0"), table
    assert worker.stop() == 0, worker.output()


def test_unpriced_model_is_recorded_without_cost_and_counted_as_unpriced(
    deployment: Budget, pg_schema_url: str
) -> None:
    worker = deployment.start("worker", "spend")
    event = deployment.record(
        "--model", "no-such-model-e2e", "--provider", "openai", "--input-tokens", "10"
    )

    assert "cost" not in event
    assert "no-such-model-e2e" in event["unpriced_reason"]
    wait_caught_up(pg_schema_url, ["spend"], 1, worker)
    totals = global_row(deployment.spend(event["occurred_at"]))
    assert totals is not None
    assert (totals["requests"], totals["unpriced_requests"]) == (1, 1)
    assert Decimal(totals["cost"]) == 0
    table = deployment.ok("spend", "--at", event["occurred_at"])
    [line] = [line for line in table.splitlines() if line.startswith("global ")]
    assert line.split()[-3:] == ["unpriced", "1", "1"], table
    assert worker.stop() == 0, worker.output()


# -- bad input: exit 2, one line on stderr saying what to fix ----------------------------------
#
# Each case runs once, all of them side by side (module fixture); two tests read the
# outcomes: the exit code and message, and the one-line format.

RECORD = ("record", "--model", "gpt-4o", "--provider", "openai")


@dataclass(frozen=True)
class BadInput:
    args: tuple[str, ...]
    says: tuple[str, ...]  # what stderr must mention (case-insensitive)
    env: dict[str, str] = field(default_factory=dict)


BAD_INPUTS = {
    "record-cached-exceeds-input": BadInput(
        (*RECORD, "--input-tokens", "10", "--cached-tokens", "20"),
        ("cached_tokens", "input_tokens"),
    ),
    "record-tag-without-value": BadInput((*RECORD, "--tag", "novalue"), ("novalue", "KEY=VALUE")),
    "status-nats-unreachable": BadInput(
        ("projections", "status"),
        ("cannot reach NATS", UNREACHABLE_NATS, "budget up", "BUDGET_NATS_URL"),
        env={"BUDGET_NATS_URL": UNREACHABLE_NATS},
    ),
    "spend-database-unreachable": BadInput(
        ("spend",),
        ("cannot reach PostgreSQL", "budget up", "BUDGET_DATABASE_URL"),
        env={"BUDGET_DATABASE_URL": UNREACHABLE_DATABASE},
    ),
    "migrate-database-unreachable": BadInput(
        ("migrate",),
        ("cannot reach PostgreSQL", "budget up", "BUDGET_DATABASE_URL"),
        env={"BUDGET_DATABASE_URL": UNREACHABLE_DATABASE},
    ),
    "spend-at-out-of-range": BadInput(
        ("spend", "--at", "9999-12-31T23:59:59"), ("--at", "from 1900-01-01 up to 9000-01-01")
    ),
    "report-end-out-of-range": BadInput(
        ("report", "custom", "--start", "2026-01-01", "--end", "9999-12-31T23:00:00"),
        ("--end", "from 1900-01-01 up to 9000-01-01"),
    ),
    "worker-unknown-projection": BadInput(
        ("worker", "nosuch"), ("nosuch", "usage", "spend", "history")
    ),
    "config-file-bad-value": BadInput(
        ("spend",), ("budget.flush_interval", "bad.yaml", "greater than 0")
    ),
}


@dataclass(frozen=True)
class Outcome:
    returncode: int | None  # None: still running after RUN_TIMEOUT (killed)
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def bad_input_outcomes(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, database_url: str
) -> dict[str, Outcome]:
    tmp = tmp_path_factory.mktemp("bad-input")
    bad_config = tmp / "bad.yaml"
    bad_config.write_text("budget:\n  flush_interval: -5\n")
    env = {
        **clean_env(tmp),
        "BUDGET_NATS_URL": nats_url,
        "BUDGET_DATABASE_URL": database_url,
        "BUDGET_SUBJECT_PREFIX": f"t{uuid4().hex[:10]}",
    }
    procs = {}
    for name, case in BAD_INPUTS.items():
        case_env = {**env, **case.env}
        if "bad.yaml" in case.says:
            case_env["BUDGET_CONFIG"] = str(bad_config)
        procs[name] = subprocess.Popen(
            [*CLI, *case.args],
            cwd=ROOT,
            env=case_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    deadline = time.monotonic() + RUN_TIMEOUT
    outcomes = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            outcomes[name] = Outcome(proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            outcomes[name] = Outcome(None, out, err)
    return outcomes


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_exits_2_saying_what_to_fix(
    bad_input_outcomes: dict[str, Outcome], name: str
) -> None:
    outcome = bad_input_outcomes[name]

    assert outcome.returncode == 2, outcome
    for words in BAD_INPUTS[name].says:
        assert words.lower() in outcome.stderr.lower(), outcome.stderr
    assert outcome.stdout == ""


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_reported_in_one_line(
    bad_input_outcomes: dict[str, Outcome], name: str
) -> None:
    stderr = bad_input_outcomes[name].stderr

    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("budget: "), stderr


def test_spend_answers_without_nats(deployment: Budget) -> None:
    """``spend`` reads PostgreSQL only, so an unreachable NATS is no error for it."""
    done = deployment.run("spend", BUDGET_NATS_URL=UNREACHABLE_NATS)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "no usage recorded" in done.stdout


# -- rebuild ---------------------------------------------------------------------------------

REBUILD_AT = start_of(Period.DAILY, ago=1) + timedelta(hours=12)  # the events: in that hour


def rebuild_events(count: int) -> list[UsageRecorded]:
    return [
        usage_event(
            cost=None if i % 7 == 0 else f"0.00{i % 9 + 1}3",
            at=REBUILD_AT.replace(minute=i % 60),
            user=f"user-{i % 4}",
            model=("gpt-4o", "gpt-4o-mini")[i % 2],
        )
        for i in range(count)
    ]


def test_rebuild_while_a_worker_runs_swaps_in_version_2_with_the_same_totals(
    deployment: Budget, nats_url: str, pg_schema_url: str, topology: Topology
) -> None:
    at = REBUILD_AT.isoformat()
    asyncio.run(publish_events(nats_url, topology, rebuild_events(40)))
    worker = deployment.start("worker", "spend")
    wait_caught_up(pg_schema_url, ["spend"], 40, worker)
    before = deployment.spend(at)
    totals = global_row(before)
    assert totals is not None and totals["requests"] == 40

    out = deployment.ok("projections", "rebuild", "spend")

    assert "spend version 2 is live" in out
    spend_rows = [r for r in deployment.status() if r.name == "spend"]
    assert [(r.version, r.state, r.checkpoint) for r in spend_rows] == [(2, "live", 40)]
    assert deployment.spend(at) == before
    assert worker.running(), worker.output()
    assert worker.stop() == 0, worker.output()


def test_worker_keeps_counting_into_the_rebuilt_version(
    deployment: Budget, nats_url: str, pg_schema_url: str, topology: Topology
) -> None:
    at = REBUILD_AT.isoformat()
    events = rebuild_events(6)
    asyncio.run(publish_events(nats_url, topology, events[:5]))
    worker = deployment.start("worker", "spend")
    wait_caught_up(pg_schema_url, ["spend"], 5, worker)
    deployment.ok("projections", "rebuild", "spend")

    asyncio.run(publish_events(nats_url, topology, events[5:]))

    # A worker that follows the swap applies it within seconds (its pull request expires
    # every 5 s); 10 s bounds the wait for one that never does.
    wait_caught_up(pg_schema_url, ["spend"], 6, worker, within=10)
    totals = global_row(deployment.spend(at))
    assert totals is not None and totals["requests"] == 6
    assert [(r.version, r.checkpoint) for r in deployment.status() if r.name == "spend"] == [(2, 6)]
    assert worker.stop() == 0, worker.output()


# -- budget up -------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _processes_mentioning(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if str(path) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


@dataclass
class Banner:
    nats_url: str
    database_url: str
    worker_pids: dict[str, int]


def parse_banner(text: str) -> Banner | None:
    """The URLs and worker pids ``budget up`` printed, once it printed all of them."""
    exports = {}
    for line in text.splitlines():
        if line.strip().startswith("export BUDGET_"):
            key, _, value = shlex.split(line.strip())[1].partition("=")
            exports[key] = value
    workers = re.search(r"^\s*workers\s+(.*)$", text, re.MULTILINE)
    if workers is None or len(exports) < 2:
        return None
    pids = {name: int(pid) for name, pid in re.findall(r"([\w-]+) \(pid (\d+)\)", workers[1])}
    return Banner(exports["BUDGET_NATS_URL"], exports["BUDGET_DATABASE_URL"], pids)


@dataclass
class Stack:
    service: Service
    data_dir: Path


def up_banner(up: Service) -> Banner:
    """The banner of ``budget up``, once it is printed (or ``budget up`` ended)."""
    banner = eventually(
        lambda: parse_banner(up.output()),
        lambda b: b is not None or not up.running(),
        90,
        "budget up banner",
    )
    assert banner is not None, up.output()
    return banner


@pytest.fixture
def budget_up(
    base_env: dict[str, str], tmp_path: Path, server_tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """``budget up`` just started on a fresh data directory (under ``server_tmp_path``:
    PostgreSQL's user must reach it), with the variables of an indirect parameter if any.
    Afterwards nothing it started may survive, whatever the test did: SIGTERM, then
    SIGKILL for the supervisor, the workers it recorded in ``stack.json`` and anything
    running from the data directory."""
    data_dir = server_tmp_path / "data"
    env = {**base_env, **getattr(request, "param", {})}
    service = Budget(env, tmp_path).start("up", "--data-dir", str(data_dir))
    try:
        yield Stack(service, data_dir)
    finally:
        if service.running():
            with contextlib.suppress(AssertionError):
                service.stop(signal.SIGTERM, grace=60)
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((data_dir / "stack.json").read_text())
            for pid in state.get("workers", {}).values():
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        for proc in _processes_mentioning(data_dir):
            with contextlib.suppress(psutil.Error):
                if proc.name() == "postgres":
                    proc.send_signal(signal.SIGINT)  # postmaster: fast shutdown
                else:
                    proc.kill()


def test_budget_up_serves_a_recorded_event_and_stops_cleanly_on_ctrl_c(
    budget_up: Stack, base_env: dict[str, str], tmp_path: Path
) -> None:
    up = budget_up.service
    banner = up_banner(up)
    assert f"export BUDGET_NATS_URL={banner.nats_url}" in up.output()
    assert sorted(banner.worker_pids) == sorted(STACK_WORKERS)
    stack = json.loads((budget_up.data_dir / "stack.json").read_text())
    servers = {"nats": stack["nats_pid"], "postgres": stack["postgres_pid"]}

    # NATS takes the generated credentials only: owner-only files, named in the banner.
    credentials = budget_up.data_dir / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o700
    passwords = {p.name: p.read_text().strip() for p in credentials.glob("nats-*.password")}
    users = ("service", "host", "alerts", "admin", *OWN_USERS.values())
    assert set(passwords) == {f"nats-{u}.password" for u in users}
    for name in passwords:
        assert stat.S_IMODE((credentials / name).stat().st_mode) == 0o600
    assert not any(password in up.output() for password in passwords.values())
    host_file = credentials / "nats-host.password"
    assert f"BUDGET_NATS_USER=host BUDGET_NATS_PASSWORD_FILE={host_file}" in up.output()
    # it declared the streams as the admin, which no worker holds: migrate needs it
    admin_file = credentials / "nats-admin.password"
    assert f"BUDGET_NATS_USER=admin BUDGET_NATS_PASSWORD_FILE={admin_file}" in up.output()
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        asyncio.run(nats.connect(banner.nats_url, allow_reconnect=False, connect_timeout=5))
    # Its NATS listens for clients alone: a monitoring port would tell any local process,
    # without a credential, every user and subscription (each host's inbox subjects).
    ports = budget_up.data_dir / "nats" / ".ports" / f"nats-server_{stack['nats_pid']}.ports"
    assert set(json.loads(ports.read_text())) == {"nats"}
    for name, pid in banner.worker_pids.items():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        # the HTTP API, the enforcer, the notifier and the query service connect to NATS
        # as their own users, the others as the services'
        nats_user = OWN_USERS.get(name, "service")
        assert f"BUDGET_NATS_USER={nats_user}".encode() in environ, name
        password_file = credentials / f"nats-{nats_user}.password"
        assert f"BUDGET_NATS_PASSWORD_FILE={password_file}".encode() in environ, name
        # the network doors connect to PostgreSQL as roles of their own, the others as
        # the owner
        role = DOOR_ROLES.get(name, "budget").encode()
        assert any(
            e.startswith(b"BUDGET_DATABASE_URL=postgresql://" + role + b"@/") for e in environ
        )

    user = Budget(
        {
            **base_env,
            "BUDGET_NATS_URL": banner.nats_url,
            "BUDGET_DATABASE_URL": banner.database_url,
            "BUDGET_NATS_USER": "host",
            "BUDGET_NATS_PASSWORD_FILE": str(host_file),
        },
        tmp_path,
    )
    event = user.record(*GPT_4O_CALL)
    totals = eventually(
        lambda: global_row(user.spend(event["occurred_at"])),
        lambda row: row is not None,
        CATCH_UP,
        "the recorded event in budget spend",
    )
    assert totals is not None
    assert Decimal(totals["cost"]) == Decimal(event["cost"])
    assert totals["requests"] == 1

    # The web console and API: its URL and the first admin key, kept owner-only.
    console = re.search(r"web console\s+(http://127\.0\.0\.1:\d+)/", up.output())
    assert console is not None, up.output()
    key_file = budget_up.data_dir / "admin.key"
    assert f"admin API key     in {key_file}" in up.output()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    rows = eventually(
        lambda: httpx.get(f"{console[1]}/api/v1/usage", headers=headers),
        lambda answer: answer.status_code == 200 and answer.json()["rows"],
        CATCH_UP,
        "the recorded event in the API's history, with the first admin key",
    ).json()["rows"]
    # published on the host credential's own subject, which the history names
    assert [(r["event_id"], r["publisher"]) for r in rows] == [(event["event_id"], "host")]
    assert key_file.read_text().strip() not in up.output()
    # and its NATS user publishes the usage a key posts, on the key's own subject
    posted = httpx.post(
        f"{console[1]}/api/v1/usage",
        headers=headers,
        json={"model": "gpt-4o", "provider": "openai", "input_tokens": 10, "user_id": "ann"},
        timeout=30,
    )
    assert posted.status_code == 201, posted.text
    # the enforcer, as its own NATS user, published the default policy at its start and
    # answers the API's probe; no process was restarted (none died of a refusal)
    eventually(
        lambda: httpx.get(f"{console[1]}/api/v1/policies", headers=headers, timeout=30),
        lambda answer: DEFAULT_USER_POLICY_ID in {p["policy_id"] for p in answer.json()},
        CATCH_UP,
        "the enforcer's default policy in the API's policies",
    )
    services = httpx.get(f"{console[1]}/api/v1/services", headers=headers, timeout=30)
    assert services.status_code == 200, services.text
    assert all(s["ok"] for s in services.json()), services.json()
    state = json.loads((budget_up.data_dir / "stack.json").read_text())
    assert state["workers"] == banner.worker_pids

    # PostgreSQL's passwords stay in their files; the URL names a pgpass file instead.
    credentials = budget_up.data_dir / "credentials"
    passwords = [path.read_text().strip() for path in credentials.glob("postgres-*.password")]
    # the superuser's, the services' and each door's
    assert len(passwords) == 2 + len(set(DOOR_ROLES.values()))
    assert banner.database_url.startswith("postgresql://budget@/budget?")
    assert f"passfile={credentials}/postgres-budget.pgpass" in banner.database_url
    state_text = (budget_up.data_dir / "stack.json").read_text()

    assert up.stop(signal.SIGINT, grace=60) == 0, up.output()
    assert up.output().rstrip().endswith("Budget Manager stopped."), up.output()
    server_log = (budget_up.data_dir / "postgres" / "log").read_text()
    for shown in (up.output(), state_text, server_log):
        assert not any(password in shown for password in passwords)
    pids = {**banner.worker_pids, **servers}
    assert {name: pid for name, pid in pids.items() if _alive(pid)} == {}
    assert _processes_mentioning(budget_up.data_dir) == []


@pytest.mark.parametrize("budget_up", [{"BUDGET_RESTART_HUNG_AFTER": "15"}], indirect=True)
def test_budget_up_restarts_a_service_that_hangs(budget_up: Stack) -> None:
    """An enforcer alive but hung (stopped here with SIGSTOP, as a deadlock would leave it)
    answered no check, for ever, while `budget up` saw its process running: every process
    shows its event loop turning in an alive file, and one whose file ages is restarted."""
    up = budget_up.service
    banner = up_banner(up)
    beats = budget_up.data_dir / "run"
    eventually(
        lambda: {p.name for p in beats.iterdir()},
        lambda found: (
            found == {f"{name}.{kind}" for name in STACK_WORKERS for kind in ("heartbeat", "alive")}
        ),
        90,
        "a heartbeat and an alive file from every process of the stack, the HTTP API's too",
    )
    # each started its loops before its first look: none said it was not healthy
    assert "not healthy" not in up.output(), up.output()
    hung = banner.worker_pids["enforcer"]
    os.kill(hung, signal.SIGSTOP)
    state = eventually(
        lambda: json.loads((budget_up.data_dir / "stack.json").read_text()),
        lambda state: state["workers"]["enforcer"] != hung,
        120,
        "the hung enforcer restarted",
    )
    assert not _alive(hung)
    assert f"worker enforcer (pid {hung}) is alive but has not turned its loops" in up.output()
    console = re.search(r"web console\s+(http://127\.0\.0\.1:\d+)/", up.output())
    assert console is not None, up.output()
    key = (budget_up.data_dir / "admin.key").read_text().strip()
    eventually(
        lambda: httpx.get(
            f"{console[1]}/api/v1/services", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ).json(),
        lambda services: all(s["ok"] for s in services),
        CATCH_UP,
        "every service answering, the restarted enforcer too",
    )
    assert (
        state["workers"]["enforcer"]
        == json.loads((budget_up.data_dir / "stack.json").read_text())["workers"]["enforcer"]
    ), "restarted once"
    assert up.stop(signal.SIGINT, grace=60) == 0, up.output()


# -- budget api-key ---------------------------------------------------------------------------


def test_api_keys_are_created_listed_and_revoked(deployment: Budget) -> None:
    keys_worker = deployment.start("worker", "api_keys")
    out = deployment.ok("api-key", "create", "--name", "Équipe billing", "--role", "ingest")
    key, note = out.strip().splitlines()
    assert key.startswith("bmk_")
    key_id = re.search(r"key id (\w+), role ingest", note)
    assert key_id is not None, note
    listed = deployment.ok("api-key", "list")
    assert re.search(rf"^{key_id[1]}\s+ingest\s+.*\slive\s+Équipe billing$", listed, re.M)
    assert key not in listed

    assert deployment.ok("api-key", "revoke", key_id[1]).strip() == f"key {key_id[1]} revoked"
    assert re.search(
        rf"^{key_id[1]}\s+ingest\s+.*\srevoked\s", deployment.ok("api-key", "list"), re.M
    )
    again = deployment.run("api-key", "revoke", key_id[1])
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"budget: there is no live key {key_id[1]!r}; `budget api-key list` shows them"
    )
    wrong = deployment.run("api-key", "create", "--name", "x", "--role", "root")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "viewer" in wrong.stderr and "ingest" in wrong.stderr
    assert keys_worker.stop() == 0, keys_worker.output()


def test_a_key_not_in_force_in_time_is_printed_all_the_same(deployment: Budget) -> None:
    """No api_keys worker runs: the key is stored, so it is printed (its only copy) with a
    warning; once a worker applies it, it is live."""
    made = deployment.run("api-key", "create", "--name", "late", "--role", "viewer")
    assert made.returncode == 0, made.stderr
    key, note = made.stdout.strip().splitlines()
    key_id = re.search(r"key id (\w+), role viewer", note)
    assert key_id is not None and key.startswith(f"bmk_{key_id[1]}_"), made.stdout
    assert made.stderr.strip() == (
        f"budget: warning: key {key_id[1]} is stored but not in force yet: it works once"
        " `budget worker api_keys` (or `budget up`) has applied it;"
        " `budget api-key list` shows it then"
    )
    keys_worker = deployment.start("worker", "api_keys")
    eventually(
        lambda: deployment.ok("api-key", "list"),
        lambda listed: (
            re.search(rf"^{key_id[1]}\s+viewer\s+.*\slive\s+late$", listed, re.M) is not None
        ),
        30,
        "the key applied",
    )
    assert keys_worker.stop() == 0, keys_worker.output()


# -- budget reprice ----------------------------------------------------------------------------


def test_reprice_prices_unpriced_usage_once_an_override_exists(
    deployment: Budget, pg_schema_url: str, tmp_path: Path
) -> None:
    spend_worker = deployment.start("worker", "spend")
    history_worker = deployment.start("worker", "history")
    month = start_of(Period.MONTHLY, ago=1)
    at = (month + timedelta(days=3, hours=12)).isoformat()
    event = deployment.record(
        "--model",
        "acme-e2e",
        "--provider",
        "acme",
        "--input-tokens",
        "1000",
        "--output-tokens",
        "500",
        "--at",
        at,
    )
    assert "cost" not in event
    wait_caught_up(pg_schema_url, ["spend", "history"], 1, spend_worker, history_worker)

    priced = tmp_path / "priced.yaml"
    priced.write_text(
        "budget:\n  price_overrides:\n    - provider: acme\n      model: acme-e2e\n"
        "      rates: {input_uncached: '1', output_text: '2'}\n"
        f"      effective_from: {month:%Y-%m-%d}\n"
    )
    window = ("--since", f"{month:%Y-%m-%d}", "--until", f"{start_of(Period.MONTHLY):%Y-%m-%d}")
    dry = deployment.ok("reprice", *window, "--dry-run", BUDGET_CONFIG=str(priced))
    assert f"{event['event_id']}: unpriced -> $0.002000" in dry
    assert "1 events checked, 1 would change, delta +0.002000 USD" in dry

    done = deployment.ok("reprice", *window, BUDGET_CONFIG=str(priced))
    assert "1 changed" in done
    wait_caught_up(pg_schema_url, ["spend", "history"], 2, spend_worker, history_worker)
    totals = global_row(deployment.spend(at))
    assert totals is not None
    assert (Decimal(totals["cost"]), totals["unpriced_requests"]) == (Decimal("0.002"), 0)
    again = deployment.ok("reprice", *window, BUDGET_CONFIG=str(priced))
    assert "1 events checked, 0 changed" in again
    assert spend_worker.stop() == 0 and history_worker.stop() == 0


def test_policy_commands_and_check_against_a_running_enforcer(deployment: Budget) -> None:
    deployment.start("worker", "policies")
    deployment.start("enforcer", BUDGET_DEFAULT_LIMIT="5")
    out = deployment.ok(
        "policy",
        "set",
        "--name",
        "Team cap",
        "--limit",
        "0.01",
        "--action",
        "block",
        "--scope",
        "user",
        "--key",
        "alice",
        "--id",
        "team-cap",
    )
    assert out.startswith("policy team-cap set: 'Team cap': user alice, 0.01 USD monthly")
    listed = deployment.ok("policy", "list")
    assert "team-cap" in listed and "default-user" in listed  # from default_limit
    assert json.loads(deployment.ok("policy", "show", "team-cap"))["action"] == "block"

    refused = deployment.run("check", "gpt-4o", "--tokens", "2000", "--user", "alice")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stdout.startswith("refused: block by policy 'Team cap'")
    allowed = deployment.run("check", "gpt-4o", "--tokens", "2000", "--user", "bob", "--json")
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["allowed"] is True

    assert deployment.ok("policy", "delete", "team-cap") == "policy team-cap deleted\n"
    again = deployment.run("check", "gpt-4o", "--tokens", "2000", "--user", "alice")
    assert again.returncode == 0, again.stdout
    missing = deployment.run("policy", "show", "team-cap")
    assert missing.returncode == 2
    assert missing.stderr == "budget: no policy with id 'team-cap'; see `budget policy list`\n"

    # The seed's default_action ("default action when limit exceeded") and soft limit,
    # for a policy set without --action or --soft-percent (it was warn at 80 %).
    defaults = {"BUDGET_DEFAULT_ACTION": "throttle", "BUDGET_SOFT_LIMIT_PERCENT": "70"}
    out = deployment.ok("policy", "set", "--name", "Cap", "--limit", "3", "--id", "cap", **defaults)
    assert out.endswith(" 3 USD monthly, throttle (soft limit 70%)\n"), out
    out = deployment.ok(
        "policy", "set", "--name", "Cap", "--limit", "3", "--id", "cap", "--action", "warn"
    )
    assert out.endswith(" 3 USD monthly, warn (soft limit 80%)\n"), out


def test_bad_policy_option_is_one_line(deployment: Budget) -> None:
    done = deployment.run(
        "policy",
        "set",
        "--name",
        "x",
        "--limit",
        "1",
        "--period",
        "custom",
        "--start",
        "2026-01-01T00:07:00",
        "--end",
        "2026-02-01T00:00:00",
    )
    assert (done.returncode, done.stderr) == (
        2,
        "budget: --start: custom bounds must fall on a quarter hour"
        " (got 2026-01-01T00:07:00+00:00)\n",
    )


def test_alert_commands_through_running_evaluator_and_notifier(deployment: Budget) -> None:
    for name in ("policies", "alerts"):
        deployment.start("worker", name)
    deployment.start("notifier")
    deployment.ok("policy", "set", "--name", "Tiny", "--limit", "0.005", "--id", "tiny")
    deployment.record(*GPT_4O_CALL)  # $0.00725: past the whole limit, three thresholds at once

    listed = eventually(
        lambda: deployment.ok("alerts", "list").splitlines(),
        lambda lines: len(lines) == 3,
        CATCH_UP,
        "three alerts listed",
    )
    assert [line.split()[5] for line in listed] == [
        "threshold_warning",
        "threshold_critical",
        "limit_exceeded",
    ]
    newest = deployment.run("alerts", "list", "--limit", "2")
    assert newest.returncode == 0
    assert newest.stdout.splitlines() == listed[1:]
    assert newest.stderr.startswith("budget: the newest 2 of 3 alerts; --limit shows more")
    alert_id = listed[0].split()[0]
    shown = eventually(
        lambda: deployment.ok("alerts", "show", alert_id),
        lambda out: "nats     sent" in out,
        CATCH_UP,
        "the alert sent on NATS",
    )
    assert '"alert_type": "threshold_warning"' in shown
    assert "webhook  skipped" in shown  # not enabled in alert_channels
    assert (
        deployment.ok("alerts", "ack", alert_id, "--by", "ops")
        == f"alert {alert_id} acknowledged\n"
    )
    assert "acked" in deployment.ok("alerts", "list").splitlines()[0]
    # Acknowledged again by someone else: the first acknowledgement stands, and says so.
    again = deployment.ok("alerts", "ack", alert_id, "--by", "bob")
    assert re.fullmatch(
        rf"alert {alert_id} was already acknowledged by ops at \S+ \S+ UTC; unchanged\n", again
    )
    assert "acknowledged by ops at" in deployment.ok("alerts", "show", alert_id)
    assert (
        deployment.ok("alerts", "resolve", alert_id, "--by", "ops")
        == f"alert {alert_id} resolved\n"
    )
    assert re.search(
        r"^resolved by ops at \S+ \S+ UTC$", deployment.ok("alerts", "show", alert_id), re.M
    )
    again = deployment.ok("alerts", "resolve", alert_id, "--by", "bob")
    assert again.startswith(f"alert {alert_id} was already resolved by ops at ")
    assert len(deployment.ok("alerts", "list").splitlines()) == 2
    # All resolved: the list says what it leaves out, not that none was ever raised.
    for line in deployment.ok("alerts", "list").splitlines():
        deployment.ok("alerts", "resolve", line.split()[0])
    assert deployment.ok("alerts", "list") == (
        "no unresolved alerts; --resolved lists resolved ones too\n"
    )
    assert deployment.ok("alerts", "list", "--policy", "none", "--resolved") == (
        "no alerts of policy none\n"
    )
    missing = deployment.run("alerts", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 2 and missing.stderr.startswith("budget: no alert with id")


def test_report_commands_export_what_the_rollups_hold(deployment: Budget, tmp_path: Path) -> None:
    deployment.start("worker", "reports")
    deployment.start("worker", "history")
    event = deployment.record(*GPT_4O_CALL)
    at = datetime.fromisoformat(event["occurred_at"])
    window = (
        "--start",
        (at - timedelta(hours=1)).isoformat(),
        "--end",
        (at + timedelta(hours=1)).isoformat(),
    )

    report = eventually(
        lambda: json.loads(deployment.ok("report", "custom", *window, "--format", "json")),
        lambda doc: bool(doc["tables"][0]["rows"]),
        CATCH_UP,
        "the usage in the rollups",
    )
    assert report["tables"][0]["rows"][0]["cost_usd"] == event["cost"]
    by_model = deployment.ok(
        "report", "custom", *window, "--group-by", "model", "--format", "csv"
    ).splitlines()
    assert by_model[0].startswith("provider,model,cost_usd,requests")
    assert by_model[1].startswith(f"openai,gpt-4o,{event['cost']},1,")

    target = tmp_path / "summary.md"
    assert deployment.ok("report", "summary", "--output", str(target)).startswith("wrote")
    assert target.read_text().startswith("# Monthly summary")
    assert "| cost_usd |" in deployment.ok("report", "trend", "--days", "7")

    calls = eventually(
        lambda: deployment.ok("report", "history", *window, "--model", "gpt-4o", "--format", "csv"),
        lambda text: len(text.splitlines()) == 2,
        CATCH_UP,
        "the call in the usage history",
    ).splitlines()
    assert calls[0].startswith("occurred_at,provider,model,kind,user_id")
    # no unpriced_reason; recorded with no NATS user: on the bare subject, so no publisher
    assert calls[1].endswith(f",{event['cost']},,{event['event_id']},")

    bad = deployment.run("report", "custom", *window, "--group-by", "colour")
    assert bad.returncode == 2
    assert bad.stderr.startswith("budget: Invalid value for '--group-by': cannot group by colour;")
