"""Ports a user chose (an option, a setting), checked free before anything starts: a
server that finds its port taken says so late, in its own words, or not at all (a
supervised one restarts forever)."""

from __future__ import annotations

import errno
import socket

from budget.config import Settings

__all__ = ["PortTaken", "require_free", "require_metrics_port", "try_listen"]


class PortTaken(ValueError):
    """A chosen port cannot be listened on; the message names it and what sets it."""


def try_listen(host: str, port: int) -> None:
    """Raises ``OSError`` unless a server could listen on ``host``:``port`` now, as servers
    bind (``SO_REUSEADDR``): a port whose old connections linger in TIME_WAIT (a server
    just stopped closed them) is free, one with a listener is not."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


def require_free(host: str, port: int, port_by: str, host_by: str | None = None) -> None:
    """``PortTaken`` unless a server could listen on ``host``:``port`` now
    (``try_listen``), naming what to change: ``host_by`` (what sets the address, if
    anything does) when this machine cannot listen on that address at all (no such name,
    another machine's address), else ``port_by``."""
    try:
        try_listen(host, port)
    except OSError as exc:
        why = exc.strerror or str(exc)
        address_wrong = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
        change = f"address with {host_by}" if address_wrong and host_by else f"port with {port_by}"
        raise PortTaken(
            f"cannot listen on {host}:{port} ({why}); choose another {change}"
        ) from None


def require_metrics_port(settings: Settings) -> None:
    """The metrics endpoint's port, when one is set, is free."""
    if settings.metrics_port is not None:
        require_free(
            settings.metrics_host,
            settings.metrics_port,
            "metrics_port (BUDGET_METRICS_PORT)",
            "metrics_host (BUDGET_METRICS_HOST)",
        )
