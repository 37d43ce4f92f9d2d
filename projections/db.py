"""Database connections: one URL format in configuration, the driver's form derived here."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = ["check_database_url", "connect", "libpq_url", "sqlalchemy_url"]

# libpq: 'invalid URI query parameter: "x"' (a URI) or 'invalid connection option "x"'.
_UNKNOWN_OPTION = re.compile(r'invalid (?:URI query parameter|connection option):? "([^"]*)"')


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style ``postgresql+psycopg://`` too; psycopg wants plain libpq."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        # Not echoed: a libpq "key=value" string holds its password in the clear.
        raise ValueError(
            "the database URL must be a URL starting with postgresql://"
            " (e.g. postgresql://budget@127.0.0.1:5432/budget, the password in a pgpass"
            " file or as postgresql://user:password@host/db)"
        )
    return f"postgresql://{rest}"


def check_database_url(url: str) -> None:
    """``ValueError`` saying what is wrong and how to fix it, unless libpq can read ``url``
    (a wrong option would otherwise surface as a driver's traceback when it connects).
    libpq's own text is never shown beyond an option's name: it may quote a password."""
    try:
        conninfo_to_dict(libpq_url(url))
    except psycopg.ProgrammingError as exc:
        unknown = _UNKNOWN_OPTION.search(str(exc))
        if unknown:
            raise ValueError(
                f"the database URL has the option {unknown.group(1)!r}, which PostgreSQL"
                " (libpq) does not know; remove it or correct its name (known ones include"
                " host, port, sslmode, passfile, connect_timeout, options)"
            ) from None
        raise ValueError(
            "libpq cannot read the database URL (a '%' not followed by two hex digits, or"
            " stray punctuation?); write it as postgresql://user@host:port/database?option=value"
        ) from None


def sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + libpq_url(url).partition("://")[2]


_CONNECT_TIMEOUT = 10
"""Seconds a connection may take to open unless the URL says (``?connect_timeout=N``):
libpq alone would wait for ever on a server that does not answer (stopped, or behind a
firewall that drops packets), and psycopg over two minutes: a command would seem to hang."""


async def connect(url: str, **options: Any) -> psycopg.AsyncConnection[Any]:
    """In autocommit; ``options`` are libpq's (e.g. ``application_name``)."""
    conninfo = libpq_url(url)
    if "connect_timeout" not in options and "connect_timeout" not in conninfo_to_dict(conninfo):
        options["connect_timeout"] = _CONNECT_TIMEOUT
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True, **options)
