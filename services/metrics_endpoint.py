"""The services' ``/metrics`` endpoint: prometheus-client's exposition behind a bearer token.

Every request must carry ``Authorization: Bearer <metrics token>`` (in Prometheus:
``authorization: {credentials_file: ...}``); any other gets 401, whatever its path or
method. The token is compared in constant time and never logged: the server logs no
request at all. It is the ``metrics_token_file`` setting's content (read once, at start)
or ``metrics_token``; ``budget up`` makes one (``services.stack_metrics``), compose passes
a secret (docs/security.md, Metrics).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from budget.config import ConfigError, Settings, secret_from_file

__all__ = ["metrics_token", "require_token", "start_metrics_server"]

_FIT_TOKEN = re.compile(r"[!-~]{16,}")  # printable ASCII, no space: one header's worth
_REFUSAL = b"401 Unauthorized: /metrics needs the metrics token (Authorization: Bearer ...)\n"


def metrics_token(settings: Settings) -> str:
    """The token scrapers must send: ``metrics_token_file``'s content, else
    ``metrics_token``. ``ConfigError`` (naming the setting, never the value) if the file
    cannot be read or the token is unfit (too short, a space or a control character)."""
    if settings.metrics_token_file is None:
        secret = settings.metrics_token
        token = "" if secret is None else secret.get_secret_value().strip()
        source = "metrics_token (BUDGET_METRICS_TOKEN)"
    else:
        token = secret_from_file(
            settings.metrics_token_file,
            what="the metrics token file",
            variable="BUDGET_METRICS_TOKEN_FILE",
        )
        source = f"the metrics token file {settings.metrics_token_file}"
    if not _FIT_TOKEN.fullmatch(token):
        raise ConfigError(
            f"{source} holds no usable metrics token: it takes at least 16 printable"
            " characters and no space (e.g. python3 -c 'import secrets;"
            " print(secrets.token_urlsafe(32))')"
        )
    return token


def require_token(app: WSGIApplication, token: str) -> WSGIApplication:
    """``app`` for requests whose bearer token is ``token``; 401 for any other."""
    expected = _digest(token)

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        # Digests of equal length, compared in constant time: neither the token's length
        # nor how much of it a guess got right shows in the time the answer takes.
        if scheme.lower() == "bearer" and hmac.compare_digest(_digest(given.strip()), expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [
                ("WWW-Authenticate", 'Bearer realm="metrics"'),
                ("Content-Type", "text/plain; charset=utf-8"),
            ],
        )
        return [_REFUSAL]

    return guarded


def _digest(text: str) -> bytes:
    # A WSGI header is latin-1 decoded: encoding it back gives the bytes that were sent.
    return hashlib.sha256(text.encode("latin-1")).digest()


class _Quiet(WSGIRequestHandler):
    """Logs no request: no scraper's address, path or header reaches the log."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_metrics_server(*, host: str, port: int, token: str) -> WSGIServer:
    """Serve prometheus-client's default registry on ``host:port`` to requests bearing
    ``token``, from a daemon thread (so a busy event loop still answers); the server
    (``shutdown()`` stops it). A port that is taken raises ``OSError``."""
    family, address = _listening_address(host, port)

    class MetricsServer(ThreadingWSGIServer):
        address_family = family

    server = make_server(
        address, port, require_token(make_wsgi_app(), token), MetricsServer, _Quiet
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _listening_address(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The address family (IPv4 or IPv6) and address to bind ``host`` by."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, str(address[0])
