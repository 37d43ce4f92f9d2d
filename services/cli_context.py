"""What every ``budget`` subcommand shares: the settings the top-level options loaded."""

from __future__ import annotations

from budget.config import Settings

__all__ = ["settings", "use_settings"]

_state: dict[str, Settings] = {}


def use_settings(loaded: Settings) -> None:
    _state["settings"] = loaded


def settings() -> Settings:
    return _state["settings"]
