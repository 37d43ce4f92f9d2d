"""Secrets ``budget up`` and ``budget api`` generate into their data directory
(``services.credentials``): owner-only, made once, and the same for every process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.credentials import generated_secret, write_secret_file


def test_a_secret_is_made_once_owner_only_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "credentials" / "api-session.secret"
    secret = generated_secret(path)
    assert len(secret) >= 32 and generated_secret(path) == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # nothing left beside it


def test_processes_starting_together_keep_the_first_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``budget api`` replicas on one data directory, first start: both look, find no
    secret, and make one. The one made first must stay, or each replica signs its
    cookies with its own secret (and the other refuses them)."""
    path = tmp_path / "api-session.secret"
    first = generated_secret(path)
    monkeypatch.setattr(Path, "exists", lambda self: False)  # looked before it was made
    assert generated_secret(path) == first
    assert path.read_text().strip() == first


def test_a_file_system_without_hard_links_gets_its_secret_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "api-session.secret"
    secret = generated_secret(path)
    assert path.read_text().strip() == secret and generated_secret(path) == secret
    assert list(tmp_path.iterdir()) == [path]


def test_a_rewritten_secret_file_replaces_the_old_whole(tmp_path: Path) -> None:
    path = tmp_path / "nats-users.json"
    write_secret_file(path, "old\n")
    write_secret_file(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [path]
