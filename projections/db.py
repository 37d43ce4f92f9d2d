"""Database connections: one URL format in configuration, the driver's form derived here."""

from __future__ import annotations

from typing import Any

import psycopg

from budget.config import shown_url

__all__ = ["connect", "libpq_url", "sqlalchemy_url"]


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style ``postgresql+psycopg://`` too; psycopg wants plain libpq."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        raise ValueError(f"database URL {shown_url(url)!r} must start with postgresql://")
    return f"postgresql://{rest}"


def sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + libpq_url(url).partition("://")[2]


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True)
