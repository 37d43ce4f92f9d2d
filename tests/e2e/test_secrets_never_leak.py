"""Secrets never leak. A known secret is planted in every place configuration can hold one
(``PLANTED``: a new place is one more row; the NATS password in the URL and in the settings
cannot be together, so (a) and (c) run twice, ``PLANTINGS``), then nothing a user or
operator sees may hold any of them:

(a) every ``budget`` subcommand, found by walking the command tree, run with each of its
    bad arguments (``test_cli_errors.BAD``) and with ``--help``, and with each secret put
    where it is refused (a config error);
(b) ``budget up`` doing some work (usage recorded, an API key made and used, an alert sent
    to the webhook and email channels, metrics scraped with the token and refused without
    it), stopped: its output (its workers' too: they share it), the commands' and the HTTP
    answers, and every file under its data directory except those that hold a secret on
    purpose;
(c) every command, and a service, pointed at servers that cannot be reached with a
    password in their URLs.

``test_the_search_finds_every_planted_secret`` shows each row's secret reaches the settings
and that the search would see it printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import yaml
from integration.alerting import webhook_server
from test_cli import GPT_4O_CALL, Budget, eventually, parse_banner
from test_cli_errors import BAD, commands

from budget.webhooks import verify_signature

from support import ROOT

CLI = (sys.executable, "-m", "services.cli")
RUN_TIMEOUT = 60.0
STARTUP = 90.0  # budget up: servers, migrations, every worker
CATCH_UP = 60.0  # a recorded call's alert, through the evaluator and the notifier
SECRET_STORES = ("admin.key", "api-session.secret", "credentials")
METRICS_TOKEN = Path("credentials", "metrics.token")
"""Files and folders under a data directory that hold a secret on purpose (0600/0700)."""


@dataclass(frozen=True)
class Planted:
    """A secret in one place configuration can hold one: ``env`` and ``config`` (merged
    into config.yaml) plant it, ``refused`` puts it where loading the config fails.
    ``{secret}`` in any of their strings is the secret."""

    place: str
    env: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    refused: Mapping[str, Any] = field(default_factory=dict)
    secret: str = field(default_factory=lambda: f"planted{uuid4().hex}")

    def filled(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{secret}", self.secret)
        if isinstance(value, Mapping):
            return {k: self.filled(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.filled(v) for v in value]
        return value


PLANTED = (
    Planted(
        "database URL password",
        config={"budget": {"database_url": "postgresql://budget:{secret}@127.0.0.1:1/budget"}},
        refused={"budget": {"database_url": ["postgresql://budget:{secret}@127.0.0.1:1/b"]}},
    ),
    Planted(
        "NATS URL password",
        env={"BUDGET_NATS_URL": "nats://budget:{secret}@127.0.0.1:1"},
        refused={"budget": {"nats_url": ["nats://budget:{secret}@127.0.0.1:1"]}},
    ),
    Planted(
        "NATS password",
        env={"BUDGET_NATS_USER": "budget", "BUDGET_NATS_PASSWORD": "{secret}"},
        refused={"budget": {"nats_password": ["{secret}"]}},
    ),
    Planted(
        "webhook secret",
        config={"alert_channels": {"webhook": {"enabled": True, "secret": "{secret}"}}},
        refused={"alert_channels": {"webhook": {"secret": ["{secret}"]}}},
    ),
    Planted(
        # Slack's and Discord's webhook URLs carry their token in the path (SECRET_TEXT).
        "webhook URL token",
        config={"alert_channels": {"webhook": {"url": "https://hooks.example.com/T0/{secret}"}}},
        refused={"alert_channels": {"webhook": {"url": ["https://hooks.example.com/{secret}"]}}},
    ),
    Planted(
        "SMTP password",
        config={"alert_channels": {"email": {"username": "budget", "password": "{secret}"}}},
        refused={"alert_channels": {"email": {"password": ["{secret}"]}}},
    ),
    Planted(
        "API session secret",
        env={"BUDGET_API_SESSION_SECRET": "{secret}"},
        refused={"budget": {"api_session_secret": ["{secret}"]}},
    ),
    Planted(
        "metrics token",
        env={"BUDGET_METRICS_TOKEN": "{secret}"},
        refused={"budget": {"metrics_token": ["{secret}"]}},
    ),
)

# The NATS password goes in the URL or in the settings, never both (the config refuses the
# pair): each planting holds one of the two and every other row.
PLANTINGS: Mapping[str, tuple[Planted, ...]] = {
    "in the NATS URL": tuple(row for row in PLANTED if row.place != "NATS password"),
    "in the NATS settings": tuple(row for row in PLANTED if row.place != "NATS URL password"),
}
URL_PLANTING = PLANTINGS["in the NATS URL"]

# Where the channels go: not secrets; (b) points them at a receiver and a closed port.
CHANNELS = {
    "alert_channels": {
        "webhook": {"url": "http://127.0.0.1:1/hook"},
        "email": {
            "enabled": True,
            "recipients": ["ops@example.com"],
            "smtp_host": "127.0.0.1",
            "smtp_port": 1,
        },
    }
}


def merged(*documents: Mapping[str, Any]) -> dict[str, Any]:
    """The documents merged in order, mappings key by key."""
    out: dict[str, Any] = {}
    for document in documents:
        for key, value in document.items():
            both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
            out[key] = merged(out[key], value) if both else value
    return out


def planted_config(rows: tuple[Planted, ...], *extra: Mapping[str, Any]) -> dict[str, Any]:
    return merged(CHANNELS, *(row.filled(row.config) for row in rows), *extra)


def planted_env(rows: tuple[Planted, ...]) -> dict[str, str]:
    return merged(*(row.filled(row.env) for row in rows))


def leaks(text: str | bytes, found: Mapping[str, str] | None = None) -> list[str]:
    """The places whose secret ``text`` holds (``found``: secrets made while testing)."""
    secrets = {row.place: row.secret for row in PLANTED} | dict(found or {})
    data = text.encode() if isinstance(text, str) else text
    return [place for place, secret in secrets.items() if secret.encode() in data]


def environment(
    tmp: Path, config: Mapping[str, Any], rows: tuple[Planted, ...], **env: str
) -> dict[str, str]:
    """The caller's environment without ``BUDGET_*``, a NATS URL nobody listens on, the
    variables ``rows`` plant, ``config`` as the config file, ``env`` on top."""
    config_file = tmp / f"config-{uuid4().hex[:8]}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    base = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    return {
        **base,
        "BUDGET_NATS_URL": "nats://127.0.0.1:1",  # planted over with a password in the URL
        **planted_env(rows),
        "BUDGET_CONFIG": str(config_file),
        "BUDGET_SPOOL_DIR": str(tmp / "spool"),
        "BUDGET_DATA_DIR": str(tmp / "data"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        **env,
    }


@pytest.mark.parametrize("planting", PLANTINGS)
def test_the_search_finds_every_planted_secret(tmp_path: Path, planting: str) -> None:
    """Each row's secret reaches the settings (a row that plants nothing would pass (a)-(c)
    for nothing), and the search finds it once printed."""
    rows = PLANTINGS[planting]
    planted = {row.place for rows in PLANTINGS.values() for row in rows}
    assert planted == {row.place for row in PLANTED}
    script = (
        "from budget.config import load_settings\n"
        "from budget.redaction import secrets_of\n"
        "print(*secrets_of(load_settings()))\n"
    )
    env = environment(tmp_path, planted_config(rows), rows)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert leaks(done.stdout) == [row.place for row in rows], done.stdout + done.stderr


# -- (a) and (c): every command, with bad values and with unreachable servers ------------------

# Arguments that pass the checks, so the command goes on to connect (and cannot).
CONNECTING: Mapping[str, tuple[str, ...]] = {
    "check": ("gpt-4o", "--tokens", "10", "--user", "alice"),
    "record": GPT_4O_CALL,
    "reprice": ("--since", "2026-01-01", "--until", "2026-02-01"),
    "projections rebuild": ("spend",),
    "prices show": ("gpt-4o",),
    "policy set": ("--name", "x", "--limit", "1"),
    "policy show": ("some-policy",),
    "policy delete": ("some-policy",),
    "alerts show": ("00000000-0000-0000-0000-000000000000",),
    "alerts ack": ("00000000-0000-0000-0000-000000000000", "--by", "me"),
    "alerts resolve": ("00000000-0000-0000-0000-000000000000",),
    "report custom": ("--start", "2026-01-01", "--end", "2026-01-02"),
    "report history": ("--start", "2026-01-01", "--end", "2026-01-02"),
    "report compare": (
        *("--current-start", "2026-01-02", "--current-end", "2026-01-03"),
        *("--previous-start", "2026-01-01", "--previous-end", "2026-01-02"),
    ),
    "api-key create": ("--name", "x", "--role", "viewer"),
    "api-key revoke": ("abc123",),
}
SERVICES = frozenset({"up", "api", "worker", "enforcer", "notifier", "query-service"})
"""Commands that run until stopped: (c) runs one of them (the notifier) on its own."""


# Runs ``budget`` once per argument list in one process (a process per case would take
# minutes), each with its output captured; a traceback is reported as the process would.
DRIVER = """
import contextlib, io, json, sys
from services.cli import main
outputs = []
for args in json.load(sys.stdin):
    sys.argv = ["budget", *args]
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
        try:
            main()
        except SystemExit:
            pass
        except BaseException:
            sys.excepthook(*sys.exc_info())
    outputs.append(out.getvalue())
json.dump(outputs, sys.__stdout__)
"""


def commands_cases() -> list[tuple[str, ...]]:
    """Every command with each of its bad arguments, with ``--help``, and (but those that
    run until stopped) with arguments that let it go on to connect."""
    found: list[tuple[str, ...]] = [(), ("--help",)]
    for command in commands():
        words = tuple(command.split())
        found += [(*words, *args) for args in [*BAD[command], ("--help",)]]
        if words[0] not in SERVICES:
            found.append((*words, *CONNECTING.get(command, ())))
    return found


COMMANDS = [" ".join(args) for args in commands_cases()]


@pytest.fixture(scope="module", params=PLANTINGS)
def planting(request: pytest.FixtureRequest) -> str:
    """Which of ``PLANTINGS`` the commands run with."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def outputs(planting: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What each command printed, run with every secret of a planting and servers nobody
    listens on (the planted URLs'), in four processes side by side."""
    tmp = tmp_path_factory.mktemp("secrets-cli")
    rows = PLANTINGS[planting]
    env = environment(tmp, planted_config(rows), rows)
    every = commands_cases()
    chunks = [every[i::4] for i in range(4)]

    def drive(chunk: list[tuple[str, ...]]) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", DRIVER],
            input=json.dumps(chunk),
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT * 4,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        found: list[str] = json.loads(done.stdout)
        return found

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(drive, chunks))
    return {
        " ".join(args): text
        for chunk, texts in zip(chunks, results, strict=True)
        for args, text in zip(chunk, texts, strict=True)
    }


@pytest.mark.parametrize("case", COMMANDS)
def test_no_command_shows_a_secret(outputs: dict[str, str], case: str) -> None:
    assert leaks(outputs[case]) == [], outputs[case]


def test_unreachable_servers_are_named_without_their_password(
    planting: str, outputs: dict[str, str]
) -> None:
    """(c): commands that connect said where they could not, the password masked."""
    named = {case for case, text in outputs.items() if "budget:***@127.0.0.1:1" in text}
    assert "spend" in named, named  # PostgreSQL's URL
    if PLANTINGS[planting] is URL_PLANTING:  # NATS's
        assert {"projections status", "policy set --name x --limit 1"} <= named, named


@pytest.mark.parametrize("row", PLANTED, ids=[row.place for row in PLANTED])
def test_a_secret_put_where_it_is_refused_is_not_echoed(row: Planted, tmp_path: Path) -> None:
    """(a): the secret where loading the config refuses it: one line naming the place."""
    rows = next(rows for rows in PLANTINGS.values() if row in rows)
    env = environment(tmp_path, planted_config(rows, row.filled(row.refused)), rows)
    for name in row.env:
        del env[name]
    done = Budget(env, tmp_path).run("spend")
    text = done.stdout + done.stderr
    assert text.startswith("budget: ") and "(see" not in text, text
    assert leaks(text) == [], text


def test_a_service_on_an_unreachable_database_does_not_log_its_password(
    nats_url: str, tmp_path: Path
) -> None:
    """(c): the notifier reaches NATS (with a password in its URL, which a server without
    users ignores) but not PostgreSQL, and says so in its log, again and again."""
    scheme, _, rest = nats_url.partition("://")
    nats_row = next(row for row in PLANTED if row.place == "NATS URL password")
    env = environment(
        tmp_path,
        planted_config(URL_PLANTING),
        URL_PLANTING,
        BUDGET_NATS_URL=f"{scheme}://budget:{nats_row.secret}@{rest}",
        BUDGET_SUBJECT_PREFIX=f"t{uuid4().hex[:10]}",
    )
    notifier = Budget(env, tmp_path).start("notifier")
    try:
        eventually(
            notifier.output,
            lambda out: out.count("database unavailable") >= 2 or not notifier.running(),
            RUN_TIMEOUT,
            "the notifier's complaints about the database",
        )
    finally:
        notifier.stop(signal.SIGTERM)
    assert "database unavailable" in notifier.output()
    assert leaks(notifier.output()) == [], notifier.output()


# -- (b): the whole stack at work ----------------------------------------------------------------


def test_budget_up_at_work_shows_no_secret(tmp_path: Path, server_tmp_path: Path) -> None:
    data_dir = server_tmp_path / "data"
    webhook_row = next(row for row in PLANTED if row.place == "webhook secret")
    with webhook_server(webhook_row.secret) as hook:
        policy = {"name": "leak watch", "limit_amount": "0.000001", "action": "notify"}
        config = planted_config(
            URL_PLANTING,
            {"alert_channels": {"webhook": {"url": hook.url}}, "budget_policies": [policy]},
        )
        cli = Budget(environment(tmp_path, config, URL_PLANTING), tmp_path)
        up = cli.start("up", "--data-dir", str(data_dir))
        try:
            shown = _work(cli, up.output, up.running, data_dir)
            shown.text += (data_dir / "stack.json").read_text()  # removed when it stops
            eventually(lambda: hook.received, bool, CATCH_UP, "the alert at the webhook")
            eventually(
                up.output, lambda out: "via email failed" in out, CATCH_UP, "the email's failure"
            )
        finally:
            code = up.stop(signal.SIGINT, grace=60)
    assert code == 0, up.output()
    headers, body = hook.received[0]
    signed = headers["X-Budget-Signature"]  # by the planted secret
    assert verify_signature(webhook_row.secret, signed, headers["Idempotency-Key"], body)

    found = {"API key": shown.key, "first admin key": (data_dir / "admin.key").read_text().strip()}
    # The passwords and the token budget up generated (NATS users', PostgreSQL roles', the
    # metrics') are secrets too.
    generated = [*(data_dir / "credentials").glob("*.password"), data_dir / METRICS_TOKEN]
    found |= {p.name: p.read_text().strip() for p in generated}
    assert len(found) >= 8, found  # service, host, alerts; postgres, budget; metrics
    assert leaks(up.output(), found) == [], up.output()
    assert leaks(shown.text, found) == [], shown.text
    leaking = {
        str(path): places
        for path in sorted(data_dir.rglob("*"))
        if path.is_file() and not _holds_secrets_on_purpose(path, data_dir)
        for places in [leaks(path.read_bytes(), found)]
        if places
    }
    assert leaking == {}


@dataclass
class Shown:
    key: str
    text: str
    """Everything the commands, the HTTP API and stack.json showed, but the key's line."""


def _work(
    cli: Budget, output: Callable[[], str], running: Callable[[], bool], data_dir: Path
) -> Shown:
    banner = eventually(
        lambda: parse_banner(output()),
        lambda b: b is not None or not running(),
        STARTUP,
        "budget up banner",
    )
    assert banner is not None, output()
    servers = {
        "BUDGET_NATS_URL": banner.nats_url,
        "BUDGET_DATABASE_URL": banner.database_url,
        "BUDGET_NATS_USER": "service",  # the admin commands' credential, as the banner says
        "BUDGET_NATS_PASSWORD_FILE": str(data_dir / "credentials" / "nats-service.password"),
    }
    made = cli.run("api-key", "create", "--name", "leak watch", "--role", "admin", **servers)
    assert made.returncode == 0, made.stderr
    key, note = made.stdout.strip().splitlines()
    recorded = cli.run("record", *GPT_4O_CALL, **servers)
    assert recorded.returncode == 0, recorded.stderr
    api = _api_url(output())
    answers = [
        eventually(
            lambda: httpx.get(f"{api}/api/v1/usage", headers={"Authorization": f"Bearer {key}"}),
            lambda answer: answer.status_code == 200 and bool(answer.json()["rows"]),
            CATCH_UP,
            "the recorded call in the API's history, with the new key",
        ),
        httpx.get(f"{api}/api/v1/usage", headers={"Authorization": f"Bearer {key}x"}),
        httpx.get(f"{api}/login"),  # a session cookie, signed with the session secret
    ]
    metrics = _metrics_url(output(), "api")
    token = (data_dir / METRICS_TOKEN).read_text().strip()
    scrapes = [
        httpx.get(metrics, headers={"Authorization": f"Bearer {token}"}),
        httpx.get(metrics, headers={"Authorization": f"Bearer {token}x"}),  # refused: 401
    ]
    assert [scrape.status_code for scrape in scrapes] == [200, 401]
    answers.append(scrapes[1])
    texts = [made.stderr, note, recorded.stdout, recorded.stderr]
    texts += [f"{a.status_code} {a.headers} {a.text}" for a in answers]
    return Shown(key, "\n".join(texts))


def _api_url(banner: str) -> str:
    for line in banner.splitlines():
        if line.strip().startswith("web console"):
            return line.split()[2].rstrip("/")
    raise AssertionError(f"no web console line in {banner!r}")


def _metrics_url(banner: str, process: str) -> str:
    found = re.search(rf"\s{re.escape(process)}\s+(http://\S+/metrics)$", banner, re.MULTILINE)
    assert found is not None, banner
    return found[1]


def _holds_secrets_on_purpose(path: Path, data_dir: Path) -> bool:
    return path.relative_to(data_dir).parts[0] in SECRET_STORES
