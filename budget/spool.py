"""A local durable spool for events that could not reach NATS.

SQLite in WAL mode: several host processes may share one spool directory; whoever
re-sends first wins, and the event id makes a second re-send harmless. One connection,
used from the publisher's loop and from worker threads (``budget.spool_writer``) in turn.
An event NATS refuses (the credential may not publish its subject) or can never take
(larger than its ``max_payload``) is moved to the table ``dead_letters``, with the
reason, rather than re-sent forever; ``budget spool resend`` puts it back once the cause
is fixed.

Opened when first written (read, if its file exists): a directory that cannot be made
(read-only, a file in its path) fails only the writes of the events that need the spool,
not the publisher, nor a process that never needs it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DeadLetter", "Spool", "SpooledEvent"]

_PUT = "INSERT OR IGNORE INTO spool (event_id, subject, payload, spooled_at) VALUES (?, ?, ?, ?)"
"""An event into the spool; one already there stays as it is."""


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    event_id: str
    subject: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event NATS refused (its credential may not publish it) or can never take (too
    large), why, and when (seconds since the epoch)."""

    event: SpooledEvent
    reason: str
    dead_at: float


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "spool.sqlite3"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _opened(self) -> sqlite3.Connection:
        """The connection, the directory and file made if need be (under ``_lock``)."""
        if self._db is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # a spooled event must survive power loss
                db.execute("PRAGMA busy_timeout=5000")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS spool (event_id TEXT PRIMARY KEY,"
                    " subject TEXT NOT NULL, payload BLOB NOT NULL, spooled_at REAL NOT NULL)"
                )
                db.execute(
                    "CREATE TABLE IF NOT EXISTS dead_letters (event_id TEXT PRIMARY KEY,"
                    " subject TEXT NOT NULL, payload BLOB NOT NULL, reason TEXT NOT NULL,"
                    " dead_at REAL NOT NULL)"
                )
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _read(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        """The rows of ``query``; none while there is no spool file."""
        with self._lock:
            if self._db is None and not self.path.exists():
                return []
            return self._opened().execute(query, params).fetchall()

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
        with self._transaction() as db:
            db.executemany(
                _PUT,
                [(e.event_id, e.subject, e.payload, now) for e in put],
            )
            db.executemany(
                "INSERT OR IGNORE INTO dead_letters"
                " (event_id, subject, payload, reason, dead_at) VALUES (?, ?, ?, ?, ?)",
                [(e.event_id, e.subject, e.payload, why, now) for e, why in buried],
            )
            db.executemany(
                "DELETE FROM spool WHERE event_id = ?",
                [(i,) for i in remove] + [(e.event_id,) for e, _ in buried],
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed when the block ends (under ``_lock``)."""
        with self._lock:
            db = self._opened()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (a full disk): a second
                # ROLLBACK would raise, hiding the cause.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def oldest(self, limit: int) -> list[SpooledEvent]:
        rows = self._read(
            "SELECT event_id, subject, payload FROM spool ORDER BY spooled_at LIMIT ?", limit
        )
        return [SpooledEvent(*row) for row in rows]

    def dead_letters(self) -> list[DeadLetter]:
        """The events NATS refused or can never take, oldest first."""
        rows = self._read(
            "SELECT event_id, subject, payload, reason, dead_at FROM dead_letters ORDER BY dead_at"
        )
        return [DeadLetter(SpooledEvent(*row[:3]), row[3], row[4]) for row in rows]

    def revive(self, event_ids: Collection[str] | None = None) -> list[str]:
        """Move dead letters (those of ``event_ids``; all with None) back into the spool,
        to be sent again (``budget spool resend``: the credential or the server's limit
        that refused them was fixed). Returns the ids moved, oldest first."""
        if not self.path.exists():
            return []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT event_id, subject, payload, dead_at FROM dead_letters ORDER BY dead_at"
            ).fetchall()
            if event_ids is not None:
                rows = [row for row in rows if row[0] in event_ids]
            db.executemany(
                _PUT,
                rows,
            )
            db.executemany(
                "DELETE FROM dead_letters WHERE event_id = ?", [(row[0],) for row in rows]
            )
        return [row[0] for row in rows]

    def __len__(self) -> int:
        rows = self._read("SELECT count(*) FROM spool")
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
