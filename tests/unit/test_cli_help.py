"""`budget --help` and each group's help list the commands with a summary each."""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup

from services.cli import app


def commands(group: TyperGroup, path: str = "budget") -> list[tuple[str, TyperCommand]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{path} {name}", command))
        if isinstance(command, TyperGroup):
            found += commands(command, f"{path} {name}")
    return found


def test_every_summary_in_a_command_list_is_one_paragraph() -> None:
    """Rich markup keeps a docstring's line breaks in the list, breaking its lines
    mid-column: the summary shown there must have none."""
    command = typer.main.get_command(app)
    assert isinstance(command, TyperGroup)
    tree = commands(command)
    assert len(tree) > 30
    for path, command in tree:
        summary = command.short_help or command.help or ""
        assert summary, f"{path} has no summary"
        assert "\n" not in summary.split("\n\n")[0], f"{path}: {summary!r}"
