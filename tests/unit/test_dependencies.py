"""DESIGN.md's dependency rule, checked on the source: services -> projections -> budget ->
events, and the public API never reaches the database."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("events", "budget", "projections", "services")
DATABASE_DRIVERS = {"psycopg", "psycopg_pool", "sqlalchemy", "alembic", "asyncpg"}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level package of every import in ``package``, by module path."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_layers_import_only_inward(package: str) -> None:
    outer = set(LAYERS[LAYERS.index(package) + 1 :])
    wrong = {path: names & outer for path, names in imported_packages(package).items()}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_contract_needs_only_pydantic_and_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"pydantic", "events"}
    wrong = {path: names - allowed for path, names in imported_packages("events").items()}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_public_api_never_opens_the_database() -> None:
    wrong = {path: names & DATABASE_DRIVERS for path, names in imported_packages("budget").items()}
    assert {path: names for path, names in wrong.items() if names} == {}
