"""Connecting to NATS: every connection's options from ``Settings`` (user, password, own
inbox, TLS), a bounded first attempt, and permission refusals turned into errors.

nats-py retries a failed first connect for as long as reconnects are allowed, and its
default error callback prints a traceback for every attempt: a command pointed at the
wrong URL would hang for minutes, shouting. Bound it and keep the errors in the log.

A server refusing a publish for lack of permission only says so in an asynchronous
``-ERR``; the request or JetStream publish would wait for its timeout, and an event be
spooled forever. ``permitted`` fails such an operation as soon as the refusal arrives.
A refused subscription likewise fails nothing: ``watching_refusal`` sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import nats
from nats.aio.client import Client

from budget.config import ConfigError, Settings, secret_from_file
from budget.server_urls import nats_servers
from events.permissions import Role, inbox_prefix, roles_allowed, subject_matches
from events.subjects import Topology

__all__ = [
    "PermissionDenied",
    "Refusal",
    "client_tls",
    "connect_nats",
    "nats_options",
    "on_refusal",
    "permitted",
    "refusal_message",
    "report_refusals",
    "round_trip",
    "watching_refusal",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# nats-py lowercases the server's "-ERR 'Permissions Violation for Publish to "x"'".
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"')


class PermissionDenied(PermissionError):
    """The NATS server refused this credential an operation; the message says which
    credential may do it."""


class Refusal(NamedTuple):
    """What the server refused: ``"publish"`` or ``"subscription"``, and the subject
    (lowercased: nats-py lowercases the server's error)."""

    kind: str
    subject: str


def nats_options(settings: Settings) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for ``settings``: credentials, the user's own
    inbox prefix (a host may read its own replies only) and TLS.

    With TLS the handshake comes first, before the server says anything: nats-py
    otherwise upgrades only when the server's INFO asks for TLS, so a server (or anyone
    on the path) answering with an INFO that does not would be sent the password in
    clear. The server must then expect it (``handshake_first`` in its ``tls`` block,
    ``services.nats_config``)."""
    options: dict[str, Any] = {}
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["inbox_prefix"] = inbox_prefix(settings.nats_user)
    password = _password(settings)
    if password is not None:
        options["password"] = password
    context = client_tls(settings)
    if context is not None:
        options["tls"] = context
        options["tls_handshake_first"] = True
    return options


def client_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context ``settings`` connect to NATS with, or None for plain text: TLS is on
    with ``nats_tls_ca`` (the server verified by it), a client certificate, or a
    ``tls://`` URL (the server verified by the system's CAs)."""
    if (
        settings.nats_tls_ca is None
        and settings.nats_tls_cert is None
        and not any(url.lower().startswith("tls://") for url in nats_servers(settings.nats_url))
    ):
        return None
    for setting in _TLS_FILES:
        _require_readable(settings, setting)
    try:
        context = ssl.create_default_context(
            cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
        )
    except ssl.SSLError:
        raise _tls_file_error(settings, "nats_tls_ca", "holds no PEM CA certificate") from None
    if settings.nats_tls_cert is not None and settings.nats_tls_key is not None:
        try:
            context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        except ssl.SSLError:
            raise ConfigError(
                f"{_tls_file_named(settings, 'nats_tls_cert')} and"
                f" {_tls_file_named(settings, 'nats_tls_key')} are not a PEM certificate and"
                " its private key (unencrypted); give the client certificate and its key"
            ) from None
    return context


_TLS_FILES = ("nats_tls_ca", "nats_tls_cert", "nats_tls_key")


def _require_readable(settings: Settings, setting: str) -> None:
    """``ConfigError`` naming ``setting`` and its file if the file cannot be read: ssl's
    own error names neither."""
    path = getattr(settings, setting)
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _tls_file_error(
            settings, setting, f"cannot be read ({exc.strerror or exc})"
        ) from None


def _tls_file_named(settings: Settings, setting: str) -> str:
    return f"{setting} (BUDGET_{setting.upper()}) {getattr(settings, setting)}"


def _tls_file_error(settings: Settings, setting: str, problem: str) -> ConfigError:
    return ConfigError(
        f"{_tls_file_named(settings, setting)} {problem}; give the path of a PEM file"
        " (docs/security.md, NATS: TLS)"
    )


def _password(settings: Settings) -> str | None:
    if settings.nats_password_file is not None:
        return secret_from_file(
            settings.nats_password_file,
            what="the NATS password file",
            variable="BUDGET_NATS_PASSWORD_FILE",
        )
    if settings.nats_password is not None:
        return settings.nats_password.get_secret_value()
    return None


class _Refusals:
    """Permission violations the server reported on one connection, as futures."""

    def __init__(self, *, also: Callable[[Exception], Awaitable[None]] | None = None) -> None:
        self._waiting: dict[str, set[asyncio.Future[Refusal]]] = {}
        self.listeners: list[Callable[[str], None]] = []
        self._also = also

    async def on_error(self, exc: Exception) -> None:
        log.debug("NATS client error: %s", exc)
        if self._also is not None:
            await self._also(exc)
        found = _VIOLATION.search(str(exc))
        if found is None:
            return
        refusal = Refusal(found.group(1), found.group(2))
        for watched, waiters in list(self._waiting.items()):
            if subject_matches(watched, refusal.subject):
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(refusal)
        if found.group(1) == "publish":
            for listener in self.listeners:
                listener(found.group(2))

    def watch(self, subject: str) -> asyncio.Future[Refusal]:
        waiter: asyncio.Future[Refusal] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(subject.lower(), set()).add(waiter)
        return waiter

    def forget(self, subject: str, waiter: asyncio.Future[Refusal]) -> None:
        waiters = self._waiting.get(subject.lower(), set())
        waiters.discard(waiter)
        if not waiters:
            self._waiting.pop(subject.lower(), None)


_refusals: weakref.WeakKeyDictionary[Client, _Refusals] = weakref.WeakKeyDictionary()


async def connect_nats(url: str, *, within: float, **options: Any) -> Client:
    """Connect to ``url`` (one server or a comma-separated list) within ``within`` seconds
    or raise ``TimeoutError`` (or the connect error). ``options`` go to ``nats.connect``
    (``nats_options`` gives them from settings); reconnects after the first success follow
    them."""
    refusals = _Refusals(also=options.pop("error_cb", None))
    options["error_cb"] = refusals.on_error
    async with asyncio.timeout(within):
        client: Client = await nats.connect(nats_servers(url), connect_timeout=within, **options)
    _refusals[client] = refusals
    return client


def report_refusals(nc: Client) -> None:
    """Report the refusals the server sends ``nc``, a connection made elsewhere (a
    service's, by FastStream), to ``on_refusal`` and ``watching_refusal`` as those of
    ``connect_nats``'s are; its own error callback still gets every error."""
    if nc in _refusals:
        return
    refusals = _Refusals(also=nc._error_cb)
    nc._error_cb = refusals.on_error  # nats-py calls it for each -ERR it reads
    _refusals[nc] = refusals


def on_refusal(nc: Client, listener: Callable[[str], None]) -> None:
    """Call ``listener(subject)`` (lowercased, as the server's error gives it) whenever
    the server refuses a publish on ``nc`` (a connection of ``connect_nats``)."""
    refusals = _refusals.get(nc)
    if refusals is not None:
        refusals.listeners.append(listener)


async def permitted(
    nc: Client, subject: str, operation: Awaitable[T], *, needs: Role | None = None
) -> T:
    """Await ``operation``, which publishes to ``subject`` (wildcards allowed: to subjects
    it matches) on ``nc``; raise ``PermissionDenied`` as soon as the server refuses that
    publish, naming ``needs`` when given: the credential the whole operation takes, not
    only the publish refused first (a host is refused a stream's info, which ``service``
    may ask, before the stream's making, which takes ``admin``)."""
    with watching_refusal(nc, subject) as refused:
        work = asyncio.ensure_future(operation)
        try:
            await asyncio.wait((work, refused), return_when=asyncio.FIRST_COMPLETED)
            if refused.done() and not work.done():
                if {"*", ">"} & set(subject.split(".")):
                    # The subject refused, as sent: JetStream's API and stream names
                    # are upper case, which the server's error lost.
                    subject = refused.result().subject
                    subject = subject.upper() if subject.startswith("$js.") else subject
                prefix = subject.split(".", 1)[0]
                topology = (
                    Topology(prefix=prefix)
                    if _TOKEN.fullmatch(prefix)
                    # JetStream's API: the same roles whatever the prefix
                    else Topology()
                    if prefix == "$JS"
                    else None
                )
                user = nc.options.get("user")
                raise PermissionDenied(
                    refusal_message(subject, topology=topology, user=user, needs=needs)
                )
            return await work
        finally:
            if not work.done():
                work.cancel()


async def round_trip(nc: Client) -> None:
    """Return once the server has answered everything sent on ``nc`` so far: a refusal
    of it has arrived by then. nats-py's ``flush()`` writes its PING straight to the
    socket, ahead of commands still queued for its flusher task (a SUB just made), so
    one flush may come back first; during its round trip the flusher writes them, and a
    second PING follows them."""
    for _ in range(2):
        await nc.flush(timeout=5)


@contextlib.contextmanager
def watching_refusal(nc: Client, subject: str) -> Iterator[asyncio.Future[Refusal]]:
    """A future set (to the ``Refusal``) when the server refuses an operation on
    ``subject`` (or, with wildcards, one it matches) on ``nc`` (a connection of
    ``connect_nats``), while inside. A refused subscription is only reported
    asynchronously: nothing else fails."""
    refusals = _refusals.get(nc)
    if refusals is None:
        yield asyncio.get_running_loop().create_future()  # never set: nobody reports
        return
    refused = refusals.watch(subject)
    try:
        yield refused
    finally:
        refusals.forget(subject, refused)


def refusal_message(
    subject: str,
    *,
    topology: Topology | None,
    user: str | None,
    publish: bool = True,
    needs: Role | None = None,
) -> str:
    """Which credential may not publish (or subscribe to) ``subject``, and which may:
    ``needs``, else the least privileged ones ``topology`` lets; and how to give one."""
    roles: list[Role] = (
        [needs]
        if needs is not None
        else roles_allowed(subject, topology=topology, publish=publish)
        if topology is not None
        else []
    )
    who = f"the NATS user {user!r}" if user else "this NATS connection (no user)"
    article = "an" if roles and roles[0][0] in "aeiou" else "a"
    may = (
        f"only {article} {' or '.join(repr(r) for r in roles)} credential may"
        if roles
        else "ask the operator which credential may"
    )
    what = "publish to" if publish else "subscribe to"
    return (
        f"{who} may not {what} {subject}; {may} (BUDGET_NATS_USER and"
        " BUDGET_NATS_PASSWORD_FILE, or nats_user and nats_password_file in config.yaml;"
        " see docs/security.md)"
    )
