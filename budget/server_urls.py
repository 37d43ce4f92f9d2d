"""The servers' URLs as the settings take them, checked when they are read: a URL no
client could connect with otherwise fails late, as if the server were down (a NATS
``http://`` URL timed out; a port that is no number surfaced as a driver's error).

Each check says what is wrong in words that quote no part of the URL but its scheme: the
caller shows the URL itself, with its password masked (``budget.config.shown_url``)."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import SplitResult, urlsplit

__all__ = ["NATS_URL_FORM", "database_url_problem", "nats_servers", "nats_url_problem"]

NATS_URL_FORM = "nats://host:4222 (or tls://, ws://, wss://; several servers comma-separated)"
_NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_WEBSOCKET_SCHEMES = ("ws", "wss")
_DATABASE_FORM = "postgresql://user@host:5432/database?option=value"


def nats_servers(url: str) -> list[str]:
    """The servers of ``url``, one URL or a comma-separated list, as nats-py and FastStream
    take them (a list: given the whole string, nats-py reads it as one malformed URL). A
    comma starts a server only where one follows (``scheme://``, or an address with no
    ``@``): in ``nats://tok,en@host`` it is the token's."""
    return [server.strip() for server in _NEXT_SERVER.split(url)]


_NEXT_SERVER = re.compile(r",(?=\s*[A-Za-z][\w+.-]*://|[^,@/]*(?:,|$))")


def nats_url_problem(url: str) -> str | None:
    """Why no NATS client could connect with ``url`` whatever server answers, or None.
    A server is ``scheme://host:port`` or ``host:port`` (nats-py takes ``nats://`` then),
    the port optional (4222)."""
    servers = nats_servers(url)
    for number, server in enumerate(servers, start=1):
        which = f"server {number} of {len(servers)}" if len(servers) > 1 else "it"
        problem = _nats_server_problem(server)
        if problem is not None:
            return f"{which} {problem}; write it as {NATS_URL_FORM}"
    if len({_scheme(server) in _WEBSOCKET_SCHEMES for server in servers}) > 1:
        return (
            "it mixes WebSocket servers (ws://, wss://) with others (nats://, tls://), which"
            " NATS clients cannot; list servers of one kind"
        )
    return None


def _nats_server_problem(server: str) -> str | None:
    if not server:
        return "is empty"
    if _unprintable(server):
        return "holds a space or a control character"
    if "://" not in server and "/" in server:
        return "is neither scheme://host:port nor host:port (is a '://' missing?)"
    scheme = _scheme(server)
    if scheme not in _NATS_SCHEMES:
        return f"has the scheme {scheme}://, which is not a NATS one"
    parts = urlsplit(server if "://" in server else f"nats://{server}")
    problem = _address_problem(parts)
    if problem is not None:
        return problem
    if scheme not in _WEBSOCKET_SCHEMES and (
        parts.path not in ("", "/") or parts.query or parts.fragment
    ):
        return "has a path or query after its address, which a NATS server has not"
    return None


def _scheme(server: str) -> str:
    scheme, separator, _ = server.partition("://")
    return scheme.lower() if separator else "nats"


def database_url_problem(url: str) -> str | None:
    """Why ``url`` is no PostgreSQL URL a driver could connect with whatever server
    answers, or None: its scheme and each host's port (libpq takes ``host1:5432,host2``).
    The options are libpq's to check (``projections.db.check_database_url``)."""
    scheme, separator, rest = url.partition("://")
    if not separator or not scheme.lower().startswith(("postgresql", "postgres")):
        # The URL is not quoted: a libpq "key=value" string holds its password in clear.
        return (
            "it must be a URL starting with postgresql:// (e.g."
            " postgresql://budget@127.0.0.1:5432/budget, the password in a pgpass file or"
            " as postgresql://user:password@host/db)"
        )
    if _unprintable(url):
        return (
            "it holds a space or a control character (percent-encode it); write it as"
            f" {_DATABASE_FORM}"
        )
    hosts = _database_hosts(rest).split(",")
    for number, host in enumerate(hosts, start=1):
        wrong = _database_host_problem(host)
        if wrong is not None:
            which = f"host {number} of {len(hosts)}" if len(hosts) > 1 else "its host"
            return f"{which} {wrong}; write it as {_DATABASE_FORM}"
    return None


def _database_hosts(rest: str) -> str:
    """The hosts of a PostgreSQL URL after its ``scheme://``, read as libpq reads them: the
    user and password end at the first '@' before any '/' (so a password may hold '?',
    '#', '[' or ']'), the hosts at the next '/' or '?'."""
    for index, char in enumerate(rest):
        if char == "/":
            break
        if char == "@":
            rest = rest[index + 1 :]
            break
    return re.split(r"[/?]", rest, maxsplit=1)[0]


def _database_host_problem(host: str) -> str | None:
    if host.startswith("["):  # an IPv6 address: [::1]:5432
        _, bracket, port = host[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return "has an IPv6 address without its closing ']' before its port"
        port = port[1:]
    else:
        port = host.rpartition(":")[2] if ":" in host else ""
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        return "has a port that is not a number from 1 to 65535"
    return None


def _address_problem(parts: SplitResult, *, host_needed: bool = True) -> str | None:
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        return "has a port that is not a number from 1 to 65535"
    if port == 0:
        return "has port 0, which no server listens on"
    if host_needed and not parts.hostname:
        return "names no host"
    return None


def _unprintable(text: str) -> bool:
    return any(char.isspace() or unicodedata.category(char).startswith("C") for char in text)
