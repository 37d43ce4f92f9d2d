"""``budget nats-credential``: the NATS users of ``budget up`` (docs/security.md)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from budget.config import Settings
from events.permissions import ROLES
from services.cli_context import settings

__all__ = ["nats_app"]

nats_app = typer.Typer(no_args_is_help=True)

DataDir = Annotated[
    Path | None, typer.Option(help="the data directory of `budget up` (default .budget)")
]


def _directory(data_dir: Path | None, current: Settings) -> Path:
    """The data directory the command works on: ``--data-dir``, else the configured one."""
    return (data_dir or current.data_dir).absolute()


def _users_changed(directory: Path, current: Settings) -> int | None:
    """The server config written again from the roster, and reloaded by the NATS server of
    a `budget up` running on ``directory``: its pid, or None when none runs there."""
    from services.nats_config import write_config
    from services.stack import reload_nats

    write_config(directory, current)
    return reload_nats(directory)


@nats_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="the NATS user (letters, digits, - and _)")],
    role: Annotated[str, typer.Option(help=f"one of {', '.join(ROLES)}")] = "host",
    data_dir: DataDir = None,
) -> None:
    """Make a NATS user with its own password file; a running `budget up` on the data
    directory reloads its NATS config, so the user can connect at once."""
    from services.nats_config import NatsCredentials

    if role not in ROLES:
        raise ValueError(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    current = settings()
    directory = _directory(data_dir, current)
    credentials = NatsCredentials(directory)
    password = credentials.add(name, role)
    pid = _users_changed(directory, current)
    typer.echo(f"NATS user {name} ({role}): password in {password}")
    typer.echo(
        f"the running NATS server (pid {pid}) reloaded its users"
        if pid
        else "`budget up` will use it on its next start"
    )
    if role != "alerts":
        env = credentials.env(name)
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        typer.echo(f"connect with: export {exports}")


@nats_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="the NATS user to withdraw")],
    data_dir: DataDir = None,
) -> None:
    """Withdraw a NATS user: its password file is deleted and a running `budget up` on the
    data directory reloads its NATS config, which closes the user's connections."""
    from services.nats_config import NatsCredentials

    current = settings()
    directory = _directory(data_dir, current)
    NatsCredentials(directory).remove(name)
    pid = _users_changed(directory, current)
    typer.echo(f"NATS user {name} withdrawn")
    typer.echo(
        f"the running NATS server (pid {pid}) reloaded its users and closed its connections"
        if pid
        else "`budget up` will refuse it from its next start"
    )


@nats_app.command("list")
def list_users(data_dir: DataDir = None) -> None:
    """The NATS users and their roles (never their passwords); exit status 2 where
    `budget up` has made none."""
    from services.nats_config import NatsCredentials

    directory = _directory(data_dir, settings())
    roles = NatsCredentials(directory).roles()
    if not roles:  # not an empty list: the wrong directory, or no stack made there yet
        raise ValueError(
            f"no NATS users in {directory}: `budget up` makes them on its first start there;"
            " start it, or name the data directory it uses with --data-dir"
        )
    for user, role in roles.items():
        typer.echo(f"{user}\t{role}")
