"""Secrets that ``budget up`` generates and keeps in its data directory.

Each secret is one file, readable by its owner only from the first byte (0600), under
``<data_dir>/credentials/`` (0700). A secret is made once, on first start, and read back
on every later start, so host apps keep working across restarts. A secret this process
writes or reads here is masked in its logs from then on (budget/redaction.py).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from budget.redaction import protect

__all__ = ["credentials_dir", "generated_secret", "write_secret_file"]


def credentials_dir(data_dir: Path) -> Path:
    """``<data_dir>/credentials``, created 0700 (and tightened if it was looser)."""
    path = Path(data_dir) / "credentials"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte)."""
    protect(text.strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def generated_secret(path: Path, *, nbytes: int = 32) -> str:
    """The secret kept in ``path``; a new random one (URL-safe) is written there if none is."""
    if not path.exists():
        write_secret_file(path, secrets.token_urlsafe(nbytes) + "\n")
    secret = path.read_text().strip()
    protect(secret)
    return secret
