"""Every ``budget`` subcommand, found by walking the command tree, given bad arguments: one
line on stderr, exit status 2, no pydantic report or link, and nothing connected to or
created first (the servers here are unreachable and the working directory stays empty).
Then on real servers: ``spend`` before ``migrate`` says to migrate; ``Équipe`` is a name."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from services.cli import app, main

from support import ROOT

CLI = (sys.executable, "-m", "services.cli")
RUN_TIMEOUT = 60.0
RECORD = ("--model", "gpt-4o", "--provider", "openai")
DAY = ("--start", "2026-01-02", "--end", "2026-01-01")

# Bad arguments for each command: a wrong value of each kind it takes. A command missing
# here fails test_every_command_has_bad_argument_cases.
BAD: dict[str, Sequence[tuple[str, ...]]] = {
    "check": [
        ("gpt-4o", "--tokens", "-3"),
        ("gpt-4o", "--cost", "-1"),
        ("gpt-4o", "--cost", "x"),
        ("gpt-4o", "--tokens", "5", "--cost", "1"),
    ],
    "up": [("--nats-port", "0"), ("--api-port", "70000")],
    "api": [("--port", "0")],
    "migrate": [("extra",)],
    "worker": [("nosuch",), ()],
    "enforcer": [("extra",)],
    "notifier": [("extra",)],
    "query-service": [("extra",)],
    "record": [
        (*RECORD, "--input-tokens", "-5"),
        (*RECORD, "--input-tokens", "10", "--cached-tokens", "20"),
        (*RECORD, "--tag", "novalue"),
        (*RECORD, "--at", "yesterday"),
        (*RECORD, "--at", "2099-01-01"),
        (*RECORD, "--at", "2000-01-01"),
        ("--model", "gpt-4o"),
    ],
    "spend": [("--scope", "bogus"), ("--period", "hourly"), ("--at", "soon")],
    "reprice": [("--since", "2026-02-01", "--until", "2026-01-01"), ("--since", "x")],
    "projections status": [("extra",)],
    "projections rebuild": [("nosuch",)],
    "prices list": [("--provider", "nosuch"), ("--provider", "opnai")],
    "prices show": [("nosuchmodel",), ("gpt-4o", "--on", "someday")],
    "policy set": [
        ("--name", "x", "--limit", "-1"),
        ("--name", "x", "--limit", "1", "--scope", "bogus"),
        ("--name", "x", "--limit", "1", "--timezone", "Mars/Olympus"),
        ("--name", "", "--limit", "1"),
        ("--name", "x", "--limit", "1", "--id", "no spaces"),
        ("--name", "x", "--limit", "1", "--scope", "user", "--key", ""),
        ("--name", "x", "--limit", "1", "--soft-percent", "150"),
        ("--name", "x", "--limit", "1", "--period", "custom"),
    ],
    "policy list": [("--scope", "bogus")],
    "policy show": [("bad id",)],
    "policy delete": [("bad id",)],
    "alerts list": [("--policy", "bad id"), ("--limit", "0"), ("--limit", "10001")],
    "alerts show": [("not-a-uuid",)],
    "alerts ack": [("not-a-uuid", "--by", "me"), ("00000000-0000-0000-0000-000000000000",)],
    "alerts resolve": [("not-a-uuid",)],
    "alerts watch": [("extra",), ()],  # (): NATS unreachable, though it would reconnect
    "report summary": [
        ("--period", "hourly"),
        ("--tz", "Mars/Olympus"),
        ("--output", "/no/such/dir/x.md"),
        ("--output", "/"),
    ],
    "report trend": [
        ("--days", "0"),
        ("--interval", "hourly"),
        ("--tz", "Nowhere"),
        ("--tz", "localtime"),
    ],
    "report compare": [
        (
            "--current-start",
            "2026-01-02",
            "--current-end",
            "2026-01-01",
            "--previous-start",
            "2025-12-01",
            "--previous-end",
            "2025-12-02",
        ),
    ],
    "report projection": [("--days", "0")],
    "report custom": [DAY, ("--start", "2026-01-01", "--end", "2026-01-02", "--group-by", "x")],
    "report history": [DAY, ("--start", "2026-01-01", "--end", "2026-01-02", "--limit", "0")],
    "api-key create": [("--name", "x", "--role", "emperor"), ("--name", " ", "--role", "viewer")],
    "api-key list": [("extra",)],
    "api-key revoke": [("a/b",)],
    "nats-credential add": [("../x",), ("team-b", "--role", "root"), ()],
    "nats-credential list": [("extra",)],
    "nats-credential remove": [(), ("host",), ("nobody",)],
    "doctor": [("--max-lag", "-1"), ("--days", "0")],
    "spool show": [("extra",)],
    "spool resend": [(), ("some-id", "--all"), ("no-such-id",)],
}


def commands() -> list[str]:
    """Every runnable subcommand of ``budget``, from typer's command tree."""

    def walk(command: object, path: tuple[str, ...]) -> Iterator[str]:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                yield from walk(sub, (*path, name))
        else:
            yield " ".join(path)

    return sorted(walk(typer.main.get_command(app), ()))


CASES = [
    (command, (*command.split(), *args))
    for command in commands()
    for args in [*BAD.get(command, ()), ("--no-such-option",)]
]


@dataclass(frozen=True)
class Outcome:
    returncode: int | None
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-errors") / "cwd"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, workdir: Path) -> dict[str, Outcome]:
    """Each case run as a user would, against servers nobody listens on."""
    config = tmp_path_factory.mktemp("cli-errors-config") / "config.yaml"
    config.write_text("budget: {}\n")
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    env.update(
        BUDGET_CONFIG=str(config),
        BUDGET_NATS_URL="nats://127.0.0.1:1",
        BUDGET_DATABASE_URL="postgresql://postgres:secret@127.0.0.1:1/budget",
        BUDGET_SPOOL_DIR=str(workdir / "spool"),
        BUDGET_DATA_DIR=str(workdir / "data"),
        PYTHONPATH=str(ROOT),
    )

    def run(args: tuple[str, ...]) -> Outcome:
        try:
            done = subprocess.run(
                [*CLI, *args],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return Outcome(None, str(exc.stdout), str(exc.stderr))
        return Outcome(done.returncode, done.stdout, done.stderr)

    with ThreadPoolExecutor(max_workers=4) as pool:
        found = pool.map(run, [args for _, args in CASES])
        return {" ".join(args): outcome for (_, args), outcome in zip(CASES, found, strict=True)}


def test_every_command_has_bad_argument_cases() -> None:
    assert set(commands()) == set(BAD)


@pytest.mark.parametrize("args", [" ".join(args) for _, args in CASES])
def test_bad_arguments_give_one_line_and_exit_2(outcomes: dict[str, Outcome], args: str) -> None:
    outcome = outcomes[args]
    assert outcome.returncode == 2, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("budget: "), outcome.stderr
    for leak in ("pydantic", "http://", "https://", "Value error", "Traceback", "secret"):
        assert leak not in outcome.stderr, outcome.stderr
    assert outcome.stdout == ""


def test_a_wrong_argument_is_refused_before_anything_is_created(
    outcomes: dict[str, Outcome], workdir: Path
) -> None:
    assert outcomes  # every case has run
    assert sorted(p.name for p in workdir.iterdir()) == []


def test_an_empty_policy_key_is_refused_before_connecting(
    outcomes: dict[str, Outcome],
) -> None:
    refused = outcomes["policy set --name x --limit 1 --scope user --key "].stderr
    assert "--key: must not be empty" in refused and "omit --key to limit each user" in refused


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ("--name x --limit -1", "budget: --limit: "),
        ("--name x --limit 1 --id no spaces", "budget: --id: "),
        ("--name x --limit 1 --soft-percent 150", "budget: --soft-percent: "),
        ("--name x --limit 1 --period custom", "budget: --start: a custom period needs --start"),
    ],
)
def test_a_wrong_policy_option_is_named_as_typed(
    outcomes: dict[str, Outcome], args: str, named: str
) -> None:
    """The user typed --limit, not the contract's limit_amount: the message names the option."""
    assert outcomes[f"policy set {args}"].stderr.startswith(named), outcomes


@pytest.mark.parametrize(
    ("at", "why"),
    [
        ("2099-01-01", "(max_clock_skew, BUDGET_MAX_CLOCK_SKEW) is allowed"),
        ("2000-01-01", "(max_event_age, BUDGET_MAX_EVENT_AGE) is allowed"),
    ],
)
def test_a_call_time_out_of_bounds_is_refused_naming_at_before_connecting(
    outcomes: dict[str, Outcome], at: str, why: str
) -> None:
    """It was refused after connecting, naming the contract's occurred_at: here the
    servers are unreachable, so the message would have been about them."""
    refused = outcomes[f"record {' '.join(RECORD)} --at {at}"].stderr
    assert refused.startswith(f"budget: --at: {at}T00:00:00+00:00 is "), refused
    assert why in refused


def test_a_check_given_tokens_and_a_cost_says_to_give_one(outcomes: dict[str, Outcome]) -> None:
    """The cost was taken and the tokens dropped without a word."""
    refused = outcomes["check gpt-4o --tokens 5 --cost 1"].stderr
    assert "give --tokens or --cost, not both" in refused


def test_an_output_file_that_cannot_be_written_is_refused_before_connecting(
    outcomes: dict[str, Outcome],
) -> None:
    """The servers here are unreachable: the message is about the file, not about them."""
    assert "folder /no/such/dir does not exist" in (
        outcomes["report summary --output /no/such/dir/x.md"].stderr
    )
    assert "/ is a directory" in outcomes["report summary --output /"].stderr


def _one_line_failure(done: subprocess.CompletedProcess[str], *secrets: str) -> str:
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("budget: "), done.stderr
    for leak in ("Traceback", *secrets):
        assert leak not in done.stderr, done.stderr
    return lines[0]


def test_a_config_path_that_is_a_directory_is_one_line_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    done = _budget(
        "--config",
        str(folder),
        "spend",
        database_url="postgresql://127.0.0.1:1/x",
        tmp_path=tmp_path,
    )
    assert f"cannot read config file {folder}" in _one_line_failure(done)


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@h/db", "host=h password='hunter2 x'", "host=h password = hunter2"]
)
def test_a_database_url_of_another_kind_is_refused_without_its_password(
    tmp_path: Path, url: str
) -> None:
    done = _budget("spend", database_url=url, tmp_path=tmp_path)
    assert "must be a URL starting with postgresql://" in _one_line_failure(done, "hunter2")


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port another process listens on, as long as the block runs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def files_in(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


def test_a_second_stack_on_one_data_directory_is_one_line_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """The running stack's ports are taken: a refused second one must not choose others
    for it (its next start would move)."""
    data = tmp_path / "data"
    (data / "nats").mkdir(parents=True)
    (data / "metrics").mkdir()
    with listening() as api, listening() as nats, listening() as metrics:
        (data / "api-port").write_text(f"{api}\n")
        (data / "nats" / "last-port").write_text(f"{nats}\n")
        (data / "metrics" / "api.port").write_text(f"{metrics}\n")
        with (data / "stack.lock").open("a+") as held:
            held.write("4242")
            held.flush()
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running stack holds it
            before = files_in(data)
            done = _budget(
                "up",
                "--data-dir",
                str(data),
                database_url="postgresql://budget@127.0.0.1:1/budget",
                tmp_path=tmp_path,
            )
            assert files_in(data) == before
    assert "another stack (pid 4242) is running on" in _one_line_failure(done)


@pytest.mark.parametrize("option", ["--nats-port", "--api-port"])
def test_budget_up_on_a_taken_port_is_one_line_naming_it_before_anything_starts(
    tmp_path: Path, option: str
) -> None:
    data = tmp_path / "data"
    with listening() as taken:
        done = _budget(
            "up",
            "--data-dir",
            str(data),
            option,
            str(taken),
            database_url="postgresql://budget@127.0.0.1:1/budget",
            tmp_path=tmp_path,
        )
    assert _one_line_failure(done) == (
        f"budget: cannot listen on 127.0.0.1:{taken} (Address already in use); choose another"
        f" port with {option}"
    )
    assert sorted(files_in(data)) == ["stack.lock"]  # no server started, no port chosen


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        (("api", "--port"), "--port (or BUDGET_API_PORT)"),
        (("enforcer",), "metrics_port (BUDGET_METRICS_PORT)"),
        (("worker", "policies"), "metrics_port (BUDGET_METRICS_PORT)"),
    ],
)
def test_a_service_on_a_taken_port_is_one_line_naming_its_setting(
    tmp_path: Path, command: tuple[str, ...], setting: str
) -> None:
    with listening() as taken:
        args = (*command, str(taken)) if command[-1] == "--port" else command
        variables = (
            {}
            if command[-1] == "--port"
            else {"BUDGET_METRICS_PORT": str(taken), "BUDGET_METRICS_TOKEN": "a" * 32}
        )
        done = _budget(
            *args,
            database_url="postgresql://budget@127.0.0.1:1/budget",
            tmp_path=tmp_path,
            **variables,
        )
    assert _one_line_failure(done) == (
        f"budget: cannot listen on 127.0.0.1:{taken} (Address already in use); choose another"
        f" port with {setting}"
    )


UNKNOWN_OPTION = "postgresql://budget:hunter2@/budget?bogus=1"


def _refuses_the_unknown_option(stderr: str) -> None:
    (line,) = stderr.splitlines()
    assert line.startswith("budget: environment variable BUDGET_DATABASE_URL: ")
    assert "the option 'bogus'" in line and "remove it or correct its name" in line
    for leak in ("hunter2", "Traceback", "Value error"):
        assert leak not in stderr


def test_migrate_with_an_unknown_database_url_option_is_one_line_naming_it(
    tmp_path: Path,
) -> None:
    done = _budget("migrate", database_url=UNKNOWN_OPTION, tmp_path=tmp_path)
    assert done.returncode == 2, done
    _refuses_the_unknown_option(done.stderr)
    assert done.stdout == ""


@pytest.mark.parametrize("command", commands())
def test_every_command_refuses_an_unknown_database_url_option(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In this process, through the entry point; ``budget doctor`` reports it as the
    configuration's problem, exit status 1, as it reports every problem."""
    for variable in [v for v in os.environ if v.startswith("BUDGET_")]:
        monkeypatch.delenv(variable)
    (tmp_path / "config.yaml").write_text("budget: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGET_DATABASE_URL", UNKNOWN_OPTION)
    monkeypatch.setattr(sys, "argv", ["budget", *command.split()])
    monkeypatch.setattr(logging, "lastResort", logging.lastResort)  # the CLI silences it
    with pytest.raises(SystemExit) as exited:
        main()
    shown = capsys.readouterr()
    if command == "doctor":
        assert exited.value.code == 1
        assert shown.out.startswith("problem  configuration        environment variable")
        assert "the option 'bogus'" in shown.out and "hunter2" not in shown.out
    else:
        assert exited.value.code == 2
        _refuses_the_unknown_option(shown.err)
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yaml"]  # nothing made first


def test_a_service_given_a_nats_password_in_the_url_and_a_file_names_both(
    tmp_path: Path,
) -> None:
    """FastStream refused the pair in words of its own (``URL credentials conflict with
    `security```); the settings refuse it first, for every command alike."""
    password_file = tmp_path / "nats.password"
    password_file.write_text("in-the-file-1234\n")
    done = _budget(
        "enforcer",
        database_url="postgresql://budget@127.0.0.1:1/budget",
        nats_url="nats://service:in-the-url-1234@127.0.0.1:1",
        tmp_path=tmp_path,
        BUDGET_NATS_USER="service",
        BUDGET_NATS_PASSWORD_FILE=str(password_file),
    )
    line = _one_line_failure(done, "in-the-url-1234", "in-the-file-1234")
    assert "nats_url (BUDGET_NATS_URL) carries credentials" in line
    assert "nats_password_file (BUDGET_NATS_PASSWORD_FILE) gives a password too" in line


def test_an_unknown_scope_lists_the_choices(outcomes: dict[str, Outcome]) -> None:
    stderr = outcomes["spend --scope bogus"].stderr
    for choice in ("global", "user", "provider", "model", "project"):
        assert choice in stderr


def _budget(
    *args: str,
    database_url: str,
    tmp_path: Path,
    nats_url: str = "nats://127.0.0.1:1",
    **variables: str,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    config = tmp_path / "config.yaml"
    if not config.exists():
        config.write_text("budget: {}\n")
    env.update(
        BUDGET_CONFIG=str(config),
        BUDGET_DATABASE_URL=database_url,
        BUDGET_NATS_URL=nats_url,
        BUDGET_SUBJECT_PREFIX=f"t{uuid.uuid4().hex[:10]}",
        BUDGET_SPOOL_DIR=str(tmp_path / "spool"),
        PYTHONPATH=str(ROOT),
        **variables,
    )
    return subprocess.run(
        [*CLI, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("spend",),
        ("report", "summary"),
        ("report", "history", "--start", "2026-01-01", "--end", "2026-01-02"),
    ],
)
def test_reading_before_migrate_says_to_run_migrate(
    pg_schema_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    done = _budget(*args, database_url=pg_schema_url, tmp_path=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "budget: the database has no Budget Manager tables yet; run `budget migrate` first\n",
    )


def test_a_configured_policy_named_equipe_is_accepted(
    nats_url: str, pg_schema_url: str, tmp_path: Path
) -> None:
    (tmp_path / "config.yaml").write_text(
        "budget_policies:\n  - name: Équipe\n    limit_amount: 10\n  - name: 日本チーム\n"
        "    limit_amount: 5\n"
    )
    migrated = _budget("migrate", database_url=pg_schema_url, tmp_path=tmp_path, nats_url=nats_url)
    assert migrated.returncode == 0, migrated.stderr
    done = _budget("spend", database_url=pg_schema_url, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no usage recorded"), done.stdout
