"""A local durable spool for events that could not reach NATS.

SQLite in WAL mode: several host processes may share one spool directory; whoever
re-sends first wins, and the event id makes a second re-send harmless. One connection,
used from the publisher's loop and from worker threads (``budget.spool_writer``) in turn.
An event NATS can never take (larger than its ``max_payload``) is moved to the table
``dead_letters``, with the reason, rather than re-sent forever.
"""

from __future__ import annotations

import sqlite3
import threading
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
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a spooled event must survive power loss
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (event_id TEXT PRIMARY KEY, subject TEXT NOT NULL,"
            " payload BLOB NOT NULL, spooled_at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters (event_id TEXT PRIMARY KEY,"
            " subject TEXT NOT NULL, payload BLOB NOT NULL, reason TEXT NOT NULL,"
            " dead_at REAL NOT NULL)"
        )

    def update(
        self,
        *,
        put: Iterable[SpooledEvent] = (),
        remove: Iterable[str] = (),
        bury: Iterable[tuple[SpooledEvent, str]] = (),
    ) -> None:
        """In one transaction: ``put`` events in (one already there stays as it is),
        ``remove`` events out, by id, and ``bury`` events, with the reason, in
        ``dead_letters`` (out of the spool if there)."""
        now = time.time()
        buried = list(bury)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO spool (event_id, subject, payload, spooled_at)"
                    " VALUES (?, ?, ?, ?)",
                    [(e.event_id, e.subject, e.payload, now) for e in put],
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO dead_letters"
                    " (event_id, subject, payload, reason, dead_at) VALUES (?, ?, ?, ?, ?)",
                    [(e.event_id, e.subject, e.payload, why, now) for e, why in buried],
                )
                self._db.executemany(
                    "DELETE FROM spool WHERE event_id = ?",
                    [(i,) for i in remove] + [(e.event_id,) for e, _ in buried],
                )
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (a full disk): a second
                # ROLLBACK would raise, hiding the cause.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def oldest(self, limit: int) -> list[SpooledEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, subject, payload FROM spool ORDER BY spooled_at LIMIT ?",
                (limit,),
            ).fetchall()
        return [SpooledEvent(*row) for row in rows]

    def dead_letters(self) -> list[tuple[SpooledEvent, str]]:
        """The events NATS can never take, with the reason, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, subject, payload, reason FROM dead_letters ORDER BY dead_at"
            ).fetchall()
        return [(SpooledEvent(*row[:3]), row[3]) for row in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
