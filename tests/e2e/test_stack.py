"""``budget up`` (services.stack) end to end, with dummy workers: start, supervise, stop clean.

The stack runs in a subprocess (as ``budget up`` does), driven by signals like a terminal
would; afterwards no process it started may be left: workers, their children, NATS, PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import psycopg
import pytest

from services.database_roles import DOOR_ROLES
from services.stack import StackError, run_stack

from support import ROOT

DRIVER = r"""
import asyncio, json, sys
from pathlib import Path

import nats
import psycopg

from services.stack import run_stack

data_dir, marks, worker_script = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
workers = json.loads(sys.argv[4])


async def prepare(nats_url: str, database_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name="PROBE", subjects=["probe.>"])
    await js.publish("probe.x", b"x")
    info = await js.stream_info("PROBE")
    await nc.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS runs (n int)")
        conn.execute("INSERT INTO runs VALUES (1)")
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    (marks / "prepared.json").write_text(json.dumps(
        {"nats_url": nats_url, "database_url": database_url,
         "probe_messages": info.state.messages, "runs": runs}
    ))


def command(name: str) -> list[str]:
    return [sys.executable, worker_script, name, str(marks)]


sys.exit(run_stack(
    data_dir, workers, prepare=prepare, worker_command=command,
    stop_timeout=1.0, restart_backoff=(0.1, 0.5), hang_after=3.0,
))
"""

WORKER = r"""
import os, signal, subprocess, sys, time
from pathlib import Path

name, marks = sys.argv[1], Path(sys.argv[2])
assert os.environ["BUDGET_NATS_URL"].startswith("nats://127.0.0.1:")
assert os.environ["BUDGET_DATABASE_URL"].startswith("postgresql://")
(marks / f"{name}.{os.getpid()}.started").touch()
(marks / f"{name}.database_url").write_text(os.environ["BUDGET_DATABASE_URL"])

if name == "crashy":
    time.sleep(0.2)
    sys.exit(3)
if name == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if name in ("hangs", "beats"):
    # Shows its loops turning, then (hangs) stops as a deadlocked process would.
    beat = Path(os.environ["BUDGET_ALIVE_FILE"])
    for _ in range(10 if name == "hangs" else 10**9):
        beat.touch()
        (marks / f"{name}.{os.getpid()}.beat").touch()
        time.sleep(0.1)
if name == "good":
    # A grandchild that outlives its parent unless the process group is signalled.
    child = subprocess.Popen(["sleep", "1000"])
    (marks / f"grandchild.{child.pid}.started").touch()

    def on_term(signum, frame):
        (marks / f"{name}.{os.getpid()}.stopped").touch()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(0.05)
"""


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _processes_mentioning(path: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if str(path) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{proc.info['pid']}: {cmdline}")
    return found


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _pids(marks: Path, pattern: str) -> list[int]:
    return [int(p.name.split(".")[1]) for p in marks.glob(pattern)]


class Stack:
    def __init__(self, tmp_path: Path, data_dir: Path, workers: list[str]) -> None:
        self.data_dir = data_dir
        self.marks = tmp_path / "marks"
        self.marks.mkdir(exist_ok=True)
        (tmp_path / "driver.py").write_text(DRIVER)
        (tmp_path / "worker.py").write_text(WORKER)
        self.log = tmp_path / "stack.log"
        self.argv = [
            sys.executable,
            str(tmp_path / "driver.py"),
            str(self.data_dir),
            str(self.marks),
            str(tmp_path / "worker.py"),
            json.dumps(workers),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> dict[str, Any]:
        (self.marks / "prepared.json").unlink(missing_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        _wait_for(self._ready, 60, "stack ready")
        assert self.proc.poll() is None, self.output()
        return self.state()

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.data_dir / "stack.json").read_text())
        return result

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return True  # exited: start() reports it
        try:
            state = self.state()
        except (OSError, ValueError):
            return False
        return bool(state.get("ready")) and state.get("pid") == self.proc.pid

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def prepared(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.marks / "prepared.json").read_text())
        return result


@pytest.fixture
def stack_factory(tmp_path: Path, server_tmp_path: Path) -> Iterator[Callable[[list[str]], Stack]]:
    stacks: list[Stack] = []

    def make(workers: list[str]) -> Stack:
        stack = Stack(tmp_path, server_tmp_path / "data", workers)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        if stack.proc is not None and stack.proc.poll() is None:
            stack.proc.terminate()
            try:
                stack.proc.wait(20)
            except subprocess.TimeoutExpired:
                stack.proc.kill()
                stack.proc.wait()
    _kill_everything_under(tmp_path)
    _kill_everything_under(server_tmp_path)


def _kill_everything_under(path: Path) -> None:
    """After a failed test: nothing started under ``path`` may outlive it."""
    for proc in psutil.process_iter(["cmdline", "status", "name"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if str(path) not in cmdline or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == "postgres":
                proc.send_signal(signal.SIGINT)  # postmaster: fast shutdown
            else:
                proc.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_stack_supervises_and_stops_cleanly(
    stack_factory: Callable[[list[str]], Stack], signum: int
) -> None:
    stack = stack_factory(["good", "stubborn", "crashy"])
    state = stack.start()
    marks = stack.marks

    prepared = stack.prepared()
    assert prepared["nats_url"] == state["nats_url"]
    assert prepared["database_url"] == state["database_url"]
    assert state["nats_url"] != "nats://127.0.0.1:4222"
    out = stack.output()
    assert f"export BUDGET_NATS_URL={state['nats_url']}" in out
    assert "export BUDGET_DATABASE_URL=" in out

    # The crashing worker is restarted, with a logged backoff.
    _wait_for(lambda: len(_pids(marks, "crashy.*.started")) >= 3, 20, "crashy restarts")
    _wait_for(lambda: len(_pids(marks, "grandchild.*.started")) == 1, 10, "grandchild")
    assert "worker crashy exited (3)" in stack.output()
    assert "restarting in" in stack.output()

    pids = {
        "nats": state["nats_pid"],
        "postgres": state["postgres_pid"],
        **{f"worker {pid}": pid for pid in _pids(marks, "*.started")},
    }
    assert _alive(pids["nats"]) and _alive(pids["postgres"])

    assert stack.stop(signum) == 0, stack.output()

    out = stack.output()
    assert "worker stubborn" in out and "ignored SIGTERM; killing it" in out
    assert _pids(marks, "good.*.stopped"), "the well-behaved worker got SIGTERM"
    assert out.rstrip().endswith("Budget Manager stopped."), out
    leftovers = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not leftovers, leftovers
    assert not _processes_mentioning(stack.data_dir)
    assert not (stack.data_dir / "stack.json").exists()


def test_a_hung_worker_is_killed_and_restarted_and_a_beating_one_is_not(
    stack_factory: Callable[[list[str]], Stack],
) -> None:
    """A worker alive but hung (its alive file no longer touched) answered nothing, for
    ever, while `budget up` saw a running process: it is stopped and restarted once its
    file has not moved for ``hang_after`` (3 s here); one whose file keeps moving is left."""
    stack = stack_factory(["hangs", "beats"])
    state = stack.start()
    marks = stack.marks
    _wait_for(lambda: len(_pids(marks, "hangs.*.beat")) >= 2, 60, "the hung worker restarted")
    first = min(_pids(marks, "hangs.*.started"))
    assert not _alive(first), "the hung worker was killed"
    out = stack.output()
    assert f"worker hangs (pid {first}) is alive but has not turned its loops for" in out
    assert "worker hangs exited (-15)" in out, out  # SIGTERM first: it may answer what it has
    # every worker was given its own alive file under the data directory
    beats = stack.data_dir / "run"
    assert {p.name for p in beats.iterdir()} == {"hangs.alive", "beats.alive"}
    (beating,) = _pids(marks, "beats.*.started")
    assert beating == state["workers"]["beats"] and _alive(beating)
    assert "worker beats" not in out.partition("Budget Manager is up")[2]
    assert stack.stop() == 0, stack.output()


def test_stack_keeps_data_and_port_and_refuses_a_second_stack(
    stack_factory: Callable[[list[str]], Stack],
) -> None:
    stack = stack_factory([])
    first = stack.start()
    assert stack.prepared()["probe_messages"] == 1 and stack.prepared()["runs"] == 1

    with pytest.raises(StackError, match="another stack"):
        run_stack(stack.data_dir, [])

    assert stack.stop() == 0, stack.output()
    second = stack.start()
    assert stack.prepared()["probe_messages"] == 2, "JetStream data survived the restart"
    assert stack.prepared()["runs"] == 2, "PostgreSQL data survived the restart"
    assert second["nats_url"] == first["nats_url"], "the NATS port is kept when free"
    assert stack.stop() == 0, stack.output()
    assert not _processes_mentioning(stack.data_dir)


def test_failed_prepare_stops_the_servers(server_tmp_path: Path) -> None:
    async def prepare(nats_url: str, database_url: str) -> None:
        raise RuntimeError("migration failed")

    data_dir = server_tmp_path / "data"
    with pytest.raises(RuntimeError, match="migration failed"):
        run_stack(data_dir, ["never"], prepare=prepare)
    assert not _processes_mentioning(data_dir)
    assert not (data_dir / "stack.json").exists()


def test_stack_cleans_up_after_a_killed_supervisor(
    stack_factory: Callable[[list[str]], Stack],
) -> None:
    stack = stack_factory(["good"])
    first = stack.start()
    _wait_for(lambda: len(_pids(stack.marks, "grandchild.*.started")) == 1, 10, "grandchild")
    orphans = [first["nats_pid"], first["workers"]["good"]]
    orphans += _pids(stack.marks, "grandchild.*.started")
    assert stack.proc is not None
    stack.proc.kill()  # SIGKILL: no cleanup; NATS and the worker keep running
    stack.proc.wait()
    assert all(_alive(pid) for pid in orphans)

    second = stack.start()
    assert not [pid for pid in orphans if _alive(pid)], "leftovers were stopped"
    assert second["nats_url"] == first["nats_url"]
    assert stack.prepared()["probe_messages"] == 2
    assert "left over by a previous stack" in stack.output()
    assert stack.stop() == 0, stack.output()
    assert not _processes_mentioning(stack.data_dir)


@pytest.mark.parametrize("server", ["NATS", "PostgreSQL"])
def test_a_server_killed_under_the_stack_is_restarted_with_its_data(
    stack_factory: Callable[[list[str]], Stack], server: str
) -> None:
    """NATS or PostgreSQL dying under `budget up` (killed, out of memory) stalled every
    worker and host app while the supervisor said nothing: it is restarted on the same
    address with its data, and the log says so."""
    pid_key = {"NATS": "nats_pid", "PostgreSQL": "postgres_pid"}[server]
    stack = stack_factory(["good"])
    first = stack.start()
    os.kill(first[pid_key], signal.SIGKILL)

    def restarted() -> bool:
        pid = stack.state()[pid_key]
        return isinstance(pid, int) and pid != first[pid_key] and _alive(pid)

    _wait_for(restarted, 60, f"{server} restarted")
    second = stack.state()
    assert (second["nats_url"], second["database_url"]) == (
        first["nats_url"],
        first["database_url"],
    ), "workers and host apps keep their URLs"
    died = f"{server} (pid {first[pid_key]}) died ("
    assert died in stack.output() and "restarting it" in stack.output()
    # that one error, no other: a restart that worked is not told as a failed command
    errors = [line for line in stack.output().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and died in errors[0], stack.output()
    assert stack.stop() == 0, stack.output()
    stack.start()
    assert stack.prepared()["probe_messages"] == 2, "the JetStream store was kept"
    assert stack.prepared()["runs"] == 2, "PostgreSQL's data was kept"
    assert stack.stop() == 0, stack.output()
    assert not _processes_mentioning(stack.data_dir)


def test_the_api_connects_as_its_own_role_and_a_leftover_one_is_stopped(
    stack_factory: Callable[[list[str]], Stack],
) -> None:
    """``budget up`` gives each network door (the HTTP API, the query service, the enforcer,
    the notifier) the URL of its database role (services.database_roles), the other
    workers the services' role's; after a killed supervisor, the next stack finds the
    API's process by that URL and stops it."""
    stack = stack_factory([*DOOR_ROLES, "good"])
    first = stack.start()
    urls = {name: stack.marks / f"{name}.database_url" for name in (*DOOR_ROLES, "good")}
    _wait_for(lambda: all(url.exists() for url in urls.values()), 10, "the workers' URLs")
    assert urls["good"].read_text() == stack.prepared()["database_url"]
    for name, role in DOOR_ROLES.items():
        door_url = urls[name].read_text()
        assert door_url.startswith(f"postgresql://{role}@/"), name
        with psycopg.connect(door_url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
    assert set(DOOR_ROLES) >= {"api", "query-service", "enforcer", "notifier"}
    assert stack.proc is not None
    stack.proc.kill()
    stack.proc.wait()
    orphan = first["workers"]["api"]
    assert _alive(orphan)
    stack.start()
    assert not _alive(orphan), "the leftover API process was stopped"
    assert "stopping worker api pid" in stack.output()
    assert stack.stop() == 0, stack.output()
    assert not _processes_mentioning(stack.data_dir)


def _budget_up(data_dir: Path, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """The real `budget up` on ``data_dir``, in a process group of its own (as a terminal's
    foreground job), without the caller's BUDGET_ variables, its output added to ``log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", "--data-dir", str(data_dir)],
            cwd=cwd,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_ctrl_c_while_a_first_start_sets_up_postgresql_stops_cleanly(
    server_tmp_path: Path,
) -> None:
    """A terminal's Ctrl-C reaches the whole foreground process group: the real `budget
    up`, and the initdb it runs on a new data directory, which it fails."""
    data_dir = server_tmp_path / "fresh"
    log = server_tmp_path / "up.log"
    proc = _budget_up(data_dir, log, server_tmp_path)
    try:
        _wait_for(lambda: any("initdb" in p for p in _processes_mentioning(data_dir)), 60, "initdb")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        _kill_everything_under(server_tmp_path)
    out = log.read_text()
    assert out.rstrip().endswith("Budget Manager stopped."), out
    assert "budget:" not in out, out
    assert not _processes_mentioning(data_dir)


def test_budget_up_after_its_supervisor_was_killed_keeps_its_ports(
    server_tmp_path: Path,
) -> None:
    """The real `budget up`: its NATS and api, left running by a SIGKILLed supervisor, are
    stopped before the ports are chosen, so host apps and bookmarks keep their URLs."""
    data_dir = server_tmp_path / "data"
    log = server_tmp_path / "up.log"
    started: list[subprocess.Popen[bytes]] = []

    def up() -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        proc = _budget_up(data_dir, log, server_tmp_path)
        started.append(proc)

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError, ValueError):
                state = json.loads((data_dir / "stack.json").read_text())
                return bool(state["ready"]) and state["pid"] == proc.pid
            return False

        _wait_for(ready, 180, "budget up ready")
        return proc, json.loads((data_dir / "stack.json").read_text())

    try:
        first, before = up()
        api_port = (data_dir / "api-port").read_text()
        first.kill()  # SIGKILL: NATS and the workers keep running, holding their ports
        first.wait()
        second, after = up()
        assert after["nats_url"] == before["nats_url"], log.read_text()
        assert (data_dir / "api-port").read_text() == api_port
        os.killpg(second.pid, signal.SIGINT)
        assert second.wait(60) == 0, log.read_text()
    finally:
        for proc in started:  # a failed test's stack stops its workers too
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(60)
        _kill_everything_under(server_tmp_path)
    assert "left over by a previous stack" in log.read_text()
