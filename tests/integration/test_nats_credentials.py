"""``budget nats-credential add``: a new host credential, its password file, and the
running NATS server of ``budget up`` reloading its users so it can connect at once."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest
from faststream.nats import NatsBroker
from nats.errors import Error as NatsError

from budget.config import ConfigError, Settings, load_settings
from budget.natsconn import connect_nats, nats_options
from events.permissions import OWN_USERS
from services.embedded import EmbeddedNats
from services.nats_config import NatsCredentials, write_config
from services.worker import broker_options

from secured_nats import secured_nats
from support import ROOT

pytestmark = pytest.mark.integration


def _budget(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "nats-credential", *args],
        cwd=data_dir.parent,
        env={**os.environ, "BUDGET_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )


async def _connects(url: str, settings: Settings) -> bool:
    try:
        nc = await connect_nats(url, within=5, allow_reconnect=False, **nats_options(settings))
    except (NatsError, OSError):  # a refused password may close the socket before it says so
        return False
    await nc.close()
    return True


async def test_an_added_host_connects_once_the_running_server_reloaded(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = write_config(data_dir, Settings())
    with EmbeddedNats(data_dir / "nats", config_file=config, stop_timeout=5.0) as server:
        # What `budget up` records of its NATS server, for the command to find it.
        (data_dir / "stack.json").write_text(json.dumps({"nats_pid": server.pid}))
        team_b = NatsCredentials(data_dir).settings_for("team-b", Settings())
        added = await asyncio.to_thread(_budget, data_dir, "add", "team-b")
        assert added.returncode == 0, added.stderr
        password = NatsCredentials(data_dir).password_file("team-b")
        assert f"NATS user team-b (host): password in {password}" in added.stdout
        assert "reloaded its users" in added.stdout
        assert password.read_text().strip() not in added.stdout
        assert stat.S_IMODE(password.stat().st_mode) == 0o600
        # The reload is asynchronous: the new user gets in within a bounded wait.
        deadline = time.monotonic() + 30
        while not await _connects(server.url, team_b):
            assert time.monotonic() < deadline, "team-b was never let in"
        listed = await asyncio.to_thread(_budget, data_dir, "list")
        assert listed.stdout.split("\n") == [
            "service\tservice",
            "host\thost",
            "alerts\talerts",
            "admin\tadmin",
            "api\tapi",
            "enforcer\tenforcer",
            "notifier\tnotifier",
            "query\tquery",
            "team-b\thost",
            "",
        ]
        with pytest.raises(NatsError, match=r"(?i)authorization violation"):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=5)


async def test_a_removed_user_is_shut_out_and_its_connections_closed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    NatsCredentials(data_dir).ensure_defaults()
    NatsCredentials(data_dir).add("team-b", "host")
    config = write_config(data_dir, Settings())
    with EmbeddedNats(data_dir / "nats", config_file=config, stop_timeout=5.0) as server:
        (data_dir / "stack.json").write_text(json.dumps({"nats_pid": server.pid}))
        team_b = NatsCredentials(data_dir).settings_for("team-b", Settings())
        # what a host app that kept the password would present afterwards
        kept = NatsCredentials(data_dir).password_file("team-b").read_text().strip()
        stale = Settings(nats_user="team-b", nats_password=kept)
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        connected = await connect_nats(
            server.url,
            within=5,
            allow_reconnect=False,
            closed_cb=on_closed,
            **nats_options(team_b),
        )
        refused = await asyncio.to_thread(_budget, data_dir, "remove", "host")
        assert refused.returncode != 0 and "one of the defaults" in refused.stderr
        removed = await asyncio.to_thread(_budget, data_dir, "remove", "team-b")
        assert removed.returncode == 0, removed.stderr
        assert "reloaded its users and closed its connections" in removed.stdout
        assert not NatsCredentials(data_dir).password_file("team-b").exists()
        await asyncio.wait_for(closed.wait(), 30)  # the server closed team-b's connection
        assert connected.is_closed
        assert not await _connects(server.url, stale)
        listed = await asyncio.to_thread(_budget, data_dir, "list")
        assert "team-b" not in listed.stdout
        unknown = await asyncio.to_thread(_budget, data_dir, "remove", "team-b")
        assert unknown.returncode != 0 and "there is no NATS user 'team-b'" in unknown.stderr


async def test_an_older_data_directory_gains_the_processes_users_and_keeps_the_others(
    tmp_path: Path,
) -> None:
    """A data directory of a release before the HTTP API, the enforcer, the notifier and
    the query service had NATS users of their own: the next start (``write_config``) makes
    ``api``, ``enforcer``, ``notifier`` and ``query``, and every other user connects with
    the password it had."""
    data_dir = tmp_path / "data"
    older = NatsCredentials(data_dir)
    roles = {"service": "service", "host": "host", "alerts": "alerts", "admin": "admin"}
    for user, role in {**roles, "team-b": "host"}.items():
        older.add(user, role)  # type: ignore[arg-type]
    before = {user: older.password_file(user).read_text() for user in older.roles()}
    config = write_config(data_dir, Settings())
    credentials = NatsCredentials(data_dir)
    own = {user: user for user in OWN_USERS.values()}
    assert credentials.roles() == {**roles, "team-b": "host", **own}
    assert {user: credentials.password_file(user).read_text() for user in before} == before
    with EmbeddedNats(data_dir / "nats", config_file=config, stop_timeout=5.0) as server:
        for user in credentials.roles():
            assert await _connects(server.url, credentials.settings_for(user, Settings())), user


@pytest.mark.parametrize("name", OWN_USERS.values())
def test_a_host_an_older_release_named_as_a_process_is_renamed_before_the_next_start(
    tmp_path: Path, name: str
) -> None:
    """An older release let a host take the name ``api`` (``enforcer``, ``notifier``,
    ``query``), which `budget up` now gives the HTTP API (the enforcer, the notifier, the
    query service): the start is refused saying what to do, and that host may be
    withdrawn."""
    credentials = NatsCredentials(tmp_path)
    credentials.add(name, "host")
    with pytest.raises(ValueError, match="has role host, but `budget up` makes a user of that"):
        write_config(tmp_path, Settings())
    credentials.remove(name)
    write_config(tmp_path, Settings())
    assert credentials.roles()[name] == name
    with pytest.raises(ValueError, match="one of the defaults"):
        credentials.remove(name)


def test_a_user_keeps_its_role(tmp_path: Path) -> None:
    credentials = NatsCredentials(tmp_path)
    first = credentials.add("team-b", "host")
    assert credentials.add("team-b", "host") == first
    with pytest.raises(ValueError, match="exists with role host, not alerts"):
        credentials.add("team-b", "alerts")
    with pytest.raises(ValueError, match="use 1 to 64 letters"):
        credentials.add("../team-c", "host")
    with pytest.raises(ValueError, match="are the HTTP API's keys'"):
        credentials.add("api-key-0123456789ab", "host")
    assert credentials.roles() == {"team-b": "host"}


async def _broker_connects(settings: Settings) -> bool:
    """As a service connects (FastStream, ``services.worker.broker_options``)."""
    broker = NatsBroker(settings.nats_url, allow_reconnect=False, **broker_options(settings))
    try:
        await broker.connect()
    except NatsError:
        return False
    finally:
        await broker.stop()
    return True


async def test_a_credential_in_the_url_or_in_the_settings_connects_but_both_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml
    with secured_nats(tmp_path / "data") as secured:
        password_file = secured.credentials.password_file("service")
        password = password_file.read_text().strip()
        in_url = f"nats://service:{password}@{secured.server.url.removeprefix('nats://')}"
        in_settings = {
            "BUDGET_NATS_URL": secured.server.url,
            "BUDGET_NATS_USER": "service",
            "BUDGET_NATS_PASSWORD_FILE": str(password_file),
        }
        for environ in ({"BUDGET_NATS_URL": in_url}, in_settings):
            settings = load_settings(environ=environ)
            assert await _connects(settings.nats_url, settings), environ
            assert await _broker_connects(settings), environ
        wrong = load_settings(environ={**in_settings, "BUDGET_NATS_PASSWORD_FILE": __file__})
        assert not await _connects(wrong.nats_url, wrong)  # the server does check
        with pytest.raises(ConfigError, match=r"BUDGET_NATS_PASSWORD_FILE\) gives a password too"):
            load_settings(environ={**in_settings, "BUDGET_NATS_URL": in_url})
