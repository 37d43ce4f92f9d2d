"""Secrets that ``budget up`` generates and keeps in its data directory.

Each secret is one file, readable by its owner only from the first byte (0600), under
``<data_dir>/credentials/`` (0700). A secret is made once, on first start, and read back
on every later start, so host apps keep working across restarts. A secret this process
writes or reads here is masked in its logs from then on (budget/redaction.py).
"""

from __future__ import annotations

import os
import secrets
import tempfile
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
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte),
    whole: a reader sees the old file or the new one, never part of one."""
    protect(text.strip())
    _written_beside(path, text).replace(path)


def generated_secret(path: Path, *, nbytes: int = 32) -> str:
    """The secret kept in ``path``; a new random one (URL-safe) is written there if none
    is. Processes making it at once agree: the first one stored is kept, and read by all."""
    if not path.exists():
        made = _written_beside(path, secrets.token_urlsafe(nbytes) + "\n")
        try:
            os.link(made, path)  # unlike a rename, never replaces one another process made
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links (some network shares)
            if not path.exists():
                made.replace(path)
        finally:
            made.unlink(missing_ok=True)
    secret = path.read_text().strip()
    protect(secret)
    return secret


def _written_beside(path: Path, text: str) -> Path:
    """A new file in ``path``'s folder holding ``text``, 0600, of a name no other process
    writing ``path`` at the same time uses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return Path(name)
