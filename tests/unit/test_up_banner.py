"""``budget up``'s banner: what a host app is told to use, and what only the ``budget``
commands that read the database are (docs/security.md: a host app holds no database
credential; the one shown is the role that owns the database)."""

from __future__ import annotations

from pathlib import Path

from services.stack import StackInfo, _banner

DATABASE_URL = (
    "postgresql://budget@/budget?host=/d/postgres&passfile=/d/credentials/postgres-budget.pgpass"
)


def _paragraphs(text: str) -> list[str]:
    return [part for part in text.split("\n\n") if part.strip()]


def test_a_host_app_is_pointed_at_nats_only() -> None:
    banner = _banner(StackInfo(Path("/d"), "nats://127.0.0.1:4222", DATABASE_URL))
    (for_hosts,) = [p for p in _paragraphs(banner) if "export BUDGET_NATS_URL=" in p]
    assert "host app" in for_hosts and "DATABASE_URL" not in for_hosts, for_hosts
    (for_commands,) = [p for p in _paragraphs(banner) if "export BUDGET_DATABASE_URL=" in p]
    assert "a host app needs none" in for_commands, for_commands
