"""The local spool's own failures: they reach the caller as they are, and pass."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from budget.spool import Spool, SpooledEvent

from support import disk_full


def test_a_full_disk_fails_a_put_with_its_own_error_and_the_spool_takes_it_once_there_is_room(
    tmp_path: Path,
) -> None:
    """SQLite rolls a transaction back itself when the disk is full: the put says so,
    rather than that there was no transaction left to roll back."""
    spool = Spool(tmp_path)
    event = SpooledEvent("e1", "budget.events.usage", b"x" * 10_000)
    with disk_full(spool), pytest.raises(sqlite3.OperationalError, match="disk is full"):
        spool.update(put=[event])
    assert len(spool) == 0
    spool.update(put=[event])
    assert spool.oldest(10) == [event]
