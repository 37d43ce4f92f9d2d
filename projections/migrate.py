"""Apply the database migrations (alembic) programmatically: ``budget migrate``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from projections.db import sqlalchemy_url

__all__ = ["migrate"]

MIGRATIONS = Path(__file__).parent / "migrations"


def migrate(database_url: str, *, revision: str = "head") -> None:
    """Upgrade to ``revision`` (the latest by default; an earlier one for upgrade tests)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    command.upgrade(config, revision)
