"""A local durable spool for events that could not reach NATS.

SQLite in WAL mode: several host processes may share one spool directory; whoever
re-sends first wins, and the event id makes a second re-send harmless.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpooledEvent"]


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    event_id: str
    subject: str
    payload: bytes


class Spool:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a spooled event must survive power loss
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (event_id TEXT PRIMARY KEY, subject TEXT NOT NULL,"
            " payload BLOB NOT NULL, spooled_at REAL NOT NULL)"
        )

    def put(self, events: Iterable[SpooledEvent]) -> None:
        now = time.time()
        self._in_transaction(
            "INSERT OR IGNORE INTO spool (event_id, subject, payload, spooled_at)"
            " VALUES (?, ?, ?, ?)",
            [(e.event_id, e.subject, e.payload, now) for e in events],
        )

    def oldest(self, limit: int) -> list[SpooledEvent]:
        rows = self._db.execute(
            "SELECT event_id, subject, payload FROM spool ORDER BY spooled_at LIMIT ?", (limit,)
        ).fetchall()
        return [SpooledEvent(*row) for row in rows]

    def remove(self, event_ids: Iterable[str]) -> None:
        self._in_transaction("DELETE FROM spool WHERE event_id = ?", [(i,) for i in event_ids])

    def _in_transaction(self, statement: str, rows: list[tuple[object, ...]]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(statement, rows)
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk): a second ROLLBACK
            # would raise, hiding the cause.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])

    def close(self) -> None:
        self._db.close()
