"""The NATS server config of ``budget up``: one user per credential, each with its role's
permissions in its role's account (``events.permissions``), passwords bcrypt-hashed, TLS
when configured.

Credentials live in ``<data_dir>/credentials/`` (``services.credentials``): a password
file ``nats-<user>.password`` each, and ``nats-users.json`` mapping users to roles. The
first start makes ``service``, ``host``, ``alerts``, ``admin``, ``api``, ``enforcer``,
``notifier`` and ``query`` (every start makes those missing, so a data directory of an
older release gains the newer ones); ``budget nats-credential add`` makes more. The
config is ``<data_dir>/nats/nats-server.conf`` (0600).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from budget.config import ConfigError, Settings
from budget.natsconn import client_tls
from events.permissions import (
    ACCOUNTS,
    API_USER,
    ENFORCER_USER,
    NOTIFIER_USER,
    QUERY_USER,
    ROLES,
    SERVICE_USER,
    Role,
    permissions,
    shared_with,
)
from events.subjects import API_KEY_CALLER, Topology
from services.credentials import credentials_dir, generated_secret, write_secret_file

__all__ = [
    "DEFAULT_USERS",
    "NatsCredentials",
    "NatsUser",
    "ServerTls",
    "compose_config",
    "move_streams_into_accounts",
    "password_variable",
    "render_config",
    "stack_client_tls",
    "write_config",
]

DEFAULT_USERS: tuple[tuple[str, Role], ...] = (
    (SERVICE_USER, "service"),
    ("host", "host"),
    ("alerts", "alerts"),
    ("admin", "admin"),
    (API_USER, "api"),
    (ENFORCER_USER, "enforcer"),
    (NOTIFIER_USER, "notifier"),
    (QUERY_USER, "query"),
)
log = logging.getLogger(__name__)
_USER = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a subject token, as Settings.nats_user
# Each connect checks the hash; the passwords are 256 random bits, so a low cost loses
# nothing and keeps connecting fast.
_BCRYPT_ROUNDS = 6


@dataclass(frozen=True, kw_only=True)
class NatsUser:
    name: str
    role: Role
    password: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class ServerTls:
    """The server's certificate and key; with ``client_ca``, clients must present a
    certificate that CA signed. Clients start with the TLS handshake (``handshake_first``):
    one that waits for the server's INFO first gets nothing."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTls | None:
        if settings.nats_server_tls_cert is None or settings.nats_server_tls_key is None:
            return None
        return cls(
            cert=settings.nats_server_tls_cert,
            key=settings.nats_server_tls_key,
            client_ca=settings.nats_server_tls_ca,
        )


def stack_client_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of ``budget up``'s own clients (its readiness check, preparation and
    workers); ``ConfigError`` if its server has TLS and they would connect without."""
    context = client_tls(settings)
    if context is None and ServerTls.from_settings(settings) is not None:
        raise ConfigError(
            "nats_server_tls_cert (BUDGET_NATS_SERVER_TLS_CERT) turns TLS on for the NATS"
            " server of `budget up`, but its own workers connect without it: set nats_tls_ca"
            " (BUDGET_NATS_TLS_CA) to the CA that signed the server's certificate, and"
            " nats_tls_cert and nats_tls_key if it requires client certificates"
        )
    return context


class NatsCredentials:
    """The NATS users of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir)
        self.directory = self._data_dir / "credentials"
        self._roster = self.directory / "nats-users.json"

    def password_file(self, user: str) -> Path:
        return self.directory / f"nats-{user}.password"

    def roles(self) -> dict[str, Role]:
        if not self._roster.exists():
            return {}
        roster: dict[str, Role] = json.loads(self._roster.read_text())
        return roster

    def add(self, user: str, role: Role) -> Path:
        """Make ``user`` (its password file, once); returns the password file."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        _check_name(user)
        credentials_dir(self._data_dir)
        roles = self.roles()
        if roles.get(user, role) != role:
            raise ValueError(f"NATS user {user!r} exists with role {roles[user]}, not {role}")
        password = self.password_file(user)
        generated_secret(password)
        if user not in roles:
            self._write_roles({**roles, user: role})
        return password

    def remove(self, user: str) -> None:
        """Withdraw ``user``: out of the roster, its password file deleted. The default
        users are made again at every start of ``budget up``, so they are refused (but one
        an older release let a host take the name of: ``ensure_defaults``)."""
        roles = self.roles()
        if user in roles and dict(DEFAULT_USERS).get(user) == roles[user]:
            raise ValueError(
                f"NATS user {user!r} is one of the defaults, which `budget up` makes again at"
                " every start; give each host app a user of its own (`budget nats-credential"
                " add NAME`) so that it can be withdrawn"
            )
        if user not in roles:
            known = ", ".join(sorted(roles)) or "none"
            raise ValueError(f"there is no NATS user {user!r} (users: {known})")
        del roles[user]
        self._write_roles(roles)
        self.password_file(user).unlink(missing_ok=True)

    def _write_roles(self, roles: dict[str, Role]) -> None:
        write_secret_file(self._roster, json.dumps(roles, indent=2) + "\n")

    def ensure_defaults(self) -> None:
        """Make the default users missing (each start: a data directory of an older
        release lacks the newer ones), keeping the others and every password."""
        for user, role in DEFAULT_USERS:
            taken = self.roles().get(user)
            if taken is None:
                self.add(user, role)
            elif taken != role:
                raise ValueError(
                    f"the NATS user {user!r} of {self._roster} has role {taken}, but"
                    f" `budget up` makes a user of that name with role {role} (docs/security.md):"
                    f" give that app a user of another name (`budget nats-credential add NAME"
                    f" --role {taken}`), then withdraw this one (`budget nats-credential remove"
                    f" {user}`) and start again"
                )

    def env(self, user: str) -> dict[str, str]:
        """The variables a ``budget`` process or a host app connects as ``user`` with."""
        return {
            "BUDGET_NATS_USER": user,
            "BUDGET_NATS_PASSWORD_FILE": str(self.password_file(user)),
        }

    def settings_for(self, user: str, settings: Settings) -> Settings:
        """``settings`` connecting as ``user``."""
        update = {"nats_user": user, "nats_password_file": self.password_file(user)}
        return settings.model_copy(update={**update, "nats_password": None})

    def notes(self, topology: Topology) -> list[str]:
        """How each kind of client connects (for ``budget up``'s banner): variables and
        password files, never a password."""
        return [
            f"NATS users        {self.directory}/nats-users.json (one password file each)",
            "  a host app:     export " + _exports(self.env("host")),
            "  `budget` admin: export " + _exports(self.env("service")),
            "  `budget migrate`: export " + _exports(self.env("admin")),
            f"  alerts:         user alerts, password in {self.password_file('alerts')},"
            f" subscribe to {topology.prefix}.alerts.>",
            "  another host:   budget nats-credential add NAME --role host",
        ]

    def users(self) -> Iterator[NatsUser]:
        for user, role in self.roles().items():
            password = generated_secret(self.password_file(user))
            yield NatsUser(name=user, role=role, password=password)


def render_config(users: Iterable[NatsUser], *, topology: Topology, tls: ServerTls | None) -> str:
    """A nats-server config fragment: the ``accounts`` block (bcrypt-hashed passwords),
    and ``tls`` if given."""
    return _render(
        ((u.name, u.role, _q(_hashed(u.password))) for u in users), topology=topology, tls=tls
    )


def compose_config(topology: Topology, *, hosts: Sequence[str] = ()) -> str:
    """The config of compose.yaml's NATS (deploy/nats/budget.conf): the default users,
    and a ``host`` user per name in ``hosts`` (so that host apps neither share an inbox,
    nor release each other's holds, nor share limits), each password read from the
    server's environment (``BUDGET_NATS_<USER>_PASSWORD``; the server refuses to start
    without it)."""
    for name in hosts:
        _check_name(name)
        if name in dict(DEFAULT_USERS):
            raise ValueError(
                f"host user {name!r}: not one of {', '.join(dict(DEFAULT_USERS))}, which are"
                " made already"
            )
    users: list[tuple[str, Role]] = [*DEFAULT_USERS, *((name, "host") for name in hosts)]
    return _render(
        ((user, role, f"${password_variable(user)}") for user, role in users),
        topology=topology,
        tls=None,
    )


def _check_name(user: str) -> None:
    """A new user's name: a subject token (its inbox and requests are named by it), and
    none the HTTP API's keys use."""
    if not _USER.fullmatch(user):
        raise ValueError(f"NATS user {user!r}: use 1 to 64 letters, digits, - and _")
    if user.startswith(API_KEY_CALLER):
        raise ValueError(
            f"NATS user {user!r}: names starting {API_KEY_CALLER!r} are the HTTP API's"
            " keys' (their holds and limits); choose another"
        )


def password_variable(user: str) -> str:
    return f"BUDGET_NATS_{user.upper().replace('-', '_')}_PASSWORD"


def _render(
    users: Iterable[tuple[str, Role, str]], *, topology: Topology, tls: ServerTls | None
) -> str:
    """One account per role (``events.permissions.ACCOUNTS``): the services' holds
    JetStream and exports to the others what they import."""
    users = list(users)
    names = [name for name, _, _ in users]
    accounts = list(dict.fromkeys(ACCOUNTS[role] for role in ROLES))
    by_account: dict[str, list[str]] = {account: [] for account in accounts}
    for name, role, password in users:
        by_account[ACCOUNTS[role]].append(
            f"      {{user: {_q(name)}, password: {password},\n"
            f"       permissions: {_render_permissions(role, name, topology, names)}}}"
        )
    exports = [
        f'      {{{kind}: {_q(subject)}, accounts: ["{ACCOUNTS[role]}"]}}'
        for role in ROLES
        for kind, subjects in zip(("service", "stream"), shared_with(role, topology), strict=True)
        for subject in subjects
    ]
    services = ACCOUNTS["service"]
    blocks = []
    for account in accounts:
        lines = [f"  {account} {{"]
        if account == services:
            lines += ["    jetstream: enabled", "    exports = [", ",\n".join(exports), "    ]"]
        else:
            imports = [
                f"      {{{kind}: {{account: {services}, subject: {_q(subject)}}}}}"
                for role in ROLES
                if ACCOUNTS[role] == account
                for kind, subjects in zip(
                    ("service", "stream"), shared_with(role, topology), strict=True
                )
                for subject in subjects
            ]
            lines += ["    imports = [", ",\n".join(imports), "    ]"]
        lines += ["    users = [", ",\n".join(by_account[account]), "    ]", "  }"]
        blocks.append("\n".join(lines))
    text = "accounts {\n" + "\n".join(blocks) + "\n}\n"
    if tls is not None:
        # The clients' TLS handshake comes first (budget.natsconn.nats_options): the server
        # expects it, and says nothing in clear.
        text += f"tls {{\n  cert_file: {_q(str(tls.cert))}\n  key_file: {_q(str(tls.key))}\n"
        text += "  handshake_first: true\n"
        if tls.client_ca is not None:
            text += f"  ca_file: {_q(str(tls.client_ca))}\n  verify: true\n"
        text += "}\n"
    return text


def _hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(_BCRYPT_ROUNDS)).decode()


def write_config(data_dir: Path, settings: Settings) -> Path:
    """Write ``<data_dir>/nats/nats-server.conf`` for the data directory's users (the
    default ones made if missing) and the TLS settings; returns its path."""
    credentials = NatsCredentials(data_dir)
    credentials.ensure_defaults()
    path = Path(data_dir) / "nats" / "nats-server.conf"
    text = render_config(
        list(credentials.users()),
        topology=settings.topology,
        tls=ServerTls.from_settings(settings),
    )
    write_secret_file(path, text)
    return path


def move_streams_into_accounts(store_dir: Path) -> bool:
    """Move the streams a server without accounts stored (JetStream keeps them per
    account, under ``jetstream/$G``, the global one) to the services' account, where
    this release's config puts the services: else the server would make a new, empty
    event log and every projection, its checkpoint past the new log's end, would wait
    for events that never come. True when moved. Before the server starts; once."""
    jetstream = Path(store_dir) / "jetstream"
    global_streams, services = jetstream / "$G", jetstream / ACCOUNTS["service"]
    if not global_streams.is_dir():
        return False
    if services.exists():
        log.error(
            "%s and %s both hold streams: the services use the second; if the first is the"
            " event log you were using, stop NATS and move it into place (docs/operations.md,"
            " Upgrading)",
            global_streams,
            services,
        )
        return False
    global_streams.rename(services)
    return True


def _render_permissions(role: Role, user: str, topology: Topology, users: Sequence[str]) -> str:
    granted = permissions(role, user=user, topology=topology, users=users)
    publish = _allowed(granted.publish)
    if granted.deny_publish:
        publish["deny"] = [*publish.get("deny", []), *granted.deny_publish]
    return json.dumps({"publish": publish, "subscribe": _allowed(granted.subscribe)})


def _allowed(subjects: Sequence[str]) -> dict[str, list[str]]:
    """A permission allowing ``subjects`` alone: an empty allow list would allow
    everything, so none is denying all."""
    return {"allow": list(subjects)} if subjects else {"deny": [">"]}


def _exports(env: dict[str, str]) -> str:
    return " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())


def _q(text: str) -> str:
    return json.dumps(text)
