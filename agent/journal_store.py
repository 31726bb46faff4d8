"""The journal's SQLite store: schema, the outbox, runs in flight and command ids.

Synchronous on purpose: :class:`agent.journal.Journal` runs every method on its one worker
thread, which alone creates and uses the connection (``check_same_thread`` stays on, so any
use from another thread raises). See :mod:`agent.journal` for what is stored and why.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from farm.logs import get_logger

log = get_logger("agent.journal")

SCHEMA_VERSION = 2

#: Payload bytes acknowledged since the last compaction that trigger the next one. Small
#: enough that the vacuum's temporary WAL growth stays modest on a nearly full SD card.
COMPACT_AFTER_BYTES = 4 * 2**20

# SQLITE_MAX_VARIABLE_NUMBER was 999 before SQLite 3.32.
_IDS_PER_STATEMENT = 500

_SCHEMA = """
CREATE TABLE outbox (
    -- AUTOINCREMENT: ids are never reused, even once the outbox has emptied and the agent
    -- restarted, so a sender's cursor and the broker-side dedup stay valid.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    run TEXT,
    created REAL NOT NULL
);
CREATE TABLE runs (
    run TEXT PRIMARY KEY,
    board TEXT NOT NULL,
    command TEXT NOT NULL,
    last_seq INTEGER,
    started REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE commands (
    command_id TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    recorded REAL NOT NULL,
    -- Recency rank: bumped on every record, so pruning keeps the most recently used ids.
    n INTEGER NOT NULL
);
CREATE INDEX commands_by_n ON commands (n);
"""

# Version 2: the agent's start generation (see Store.next_generation).
_GENERATION_SCHEMA = """
CREATE TABLE generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value REAL NOT NULL
);
"""

_ENTRY_BYTES_SQL = "length(payload) + length(CAST(topic AS BLOB))"


class JournalError(Exception):
    """The journal file cannot be used (not a journal, corrupt, newer schema, I/O failure, or
    the journal is closed). Names the file; the file itself is never deleted or rewritten."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class OutboxEntry:
    """One stored message waiting for the broker's acknowledgement."""

    id: int
    topic: str
    payload: bytes
    run: str | None
    created: float
    """Unix time it was enqueued."""


@dataclass(frozen=True)
class InFlightRun:
    """A run started and not finished (after a restart: interrupted)."""

    run: str
    board: str
    command: dict[str, Any]
    """The JSON command that started it."""
    last_seq: int | None
    """The seq of the last sample journalled for it; ``None`` before the first."""
    started: float
    updated: float
    """Unix time of the last ``last_seq`` update (``started`` until then)."""


def entry_bytes(topic: str, payload: bytes) -> int:
    """What one message counts towards ``backlog_bytes``: payload plus UTF-8 topic."""
    return len(payload) + len(topic.encode())


def file_bytes(path: Path) -> int:
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        # The WAL is absent after a clean close.
        with suppress(FileNotFoundError):
            total += part.stat().st_size
    return total


@dataclass(frozen=True)
class Acked:
    count: int
    nbytes: int
    newest_pending: int
    compact_due: bool


@dataclass(frozen=True)
class Opened:
    backlog_count: int
    backlog_bytes: int
    newest_pending: int
    runs_in_flight: int


class Store:
    """The SQLite side. Every method runs on the journal's worker thread, which creates and
    alone uses the connection."""

    def __init__(self, path: Path, commands_kept: int) -> None:
        self.path = path
        self.commands_kept = commands_kept
        # Pruning is an index walk over commands_kept rows: do it every tenth of that.
        self.prune_every = max(1, commands_kept // 10)
        self.recorded_since_prune = 0
        # Kept here rather than on the loop side so that close() sees acks queued before it.
        self.freed_since_compact = 0
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(self.path, "journal is closed")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        # IMMEDIATE takes the write lock up front, so a transaction never fails half-way on
        # a lock upgrade.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            # SQLite may already have rolled back by itself (SQLITE_FULL, SQLITE_IOERR).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def open(self) -> Opened:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(self.path, f"cannot create the directory: {exc}") from exc
        try:
            # Autocommit (isolation_level=None): transactions are explicit, see transaction().
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(self.path, f"cannot open: {exc}") from exc
        self._conn = conn
        try:
            self._prepare(conn)
            return self._state()
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._conn = None
            raise JournalError(
                self.path,
                f"not a usable journal ({exc}); left untouched: move it aside to start afresh",
            ) from exc
        except BaseException:
            conn.close()
            self._conn = None
            raise

    def _prepare(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                self.path,
                f"journal schema version {version} is newer than this agent's "
                f"({SCHEMA_VERSION}): run a newer agent or move the file aside",
            )
        if version == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise JournalError(self.path, "an SQLite file that is not a tinyfarm journal")
            # Must precede the first table: switching it on later needs a full VACUUM.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(self.path, f"cannot use WAL mode (SQLite kept {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        if version < SCHEMA_VERSION:
            with self.transaction():
                # Version 0 is a new file; version 1 lacks only the generation table.
                schema = (_SCHEMA if version == 0 else "") + _GENERATION_SCHEMA
                for statement in schema.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def next_generation(self, now: float) -> float:
        """This start's generation: ``now``, or one more than the previous start's if the clock
        says otherwise. Ingest orders an agent's statuses by it, so it must grow even when a Pi
        without a real-time clock boots with its clock behind and corrects it later."""
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM generation WHERE id = 1").fetchone()
            generation = now if row is None else max(now, row[0] + 1.0)
            conn.execute(
                "INSERT INTO generation (id, value) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET value = excluded.value",
                (generation,),
            )
        return generation

    def _state(self) -> Opened:
        conn = self.conn
        count, nbytes = conn.execute(
            f"SELECT count(*), coalesce(sum({_ENTRY_BYTES_SQL}), 0) FROM outbox"
        ).fetchone()
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        return Opened(count, nbytes, self._newest_pending(conn), runs)

    @staticmethod
    def _newest_pending(conn: sqlite3.Connection) -> int:
        # max() of the rowid is one B-tree descent.
        newest: int = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
        return newest

    def enqueue(
        self, items: list[tuple[str, bytes]], run: str | None, last_seq: int | None
    ) -> tuple[list[int], int]:
        now = time.time()
        with self.transaction() as conn:
            ids = [
                # An INSERT always sets lastrowid; the cast only narrows the declared type.
                cast(
                    int,
                    conn.execute(
                        "INSERT INTO outbox (topic, payload, run, created) VALUES (?, ?, ?, ?)",
                        (topic, payload, run, now),
                    ).lastrowid,
                )
                for topic, payload in items
            ]
            if last_seq is not None:
                conn.execute(
                    "UPDATE runs SET last_seq = ?, updated = ? WHERE run = ?", (last_seq, now, run)
                )
        return ids, sum(entry_bytes(t, p) for t, p in items)

    def pending(self, after_id: int, limit: int) -> list[OutboxEntry]:
        rows = self.conn.execute(
            "SELECT id, topic, payload, run, created FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [OutboxEntry(*row) for row in rows]

    def ack(self, ids: list[int]) -> Acked:
        count = nbytes = 0
        with self.transaction() as conn:
            for start in range(0, len(ids), _IDS_PER_STATEMENT):
                chunk = ids[start : start + _IDS_PER_STATEMENT]
                marks = ",".join("?" * len(chunk))
                # Only rows still present count: acking twice must not skew the counters.
                n, b = conn.execute(
                    f"SELECT count(*), coalesce(sum({_ENTRY_BYTES_SQL}), 0) FROM outbox "
                    f"WHERE id IN ({marks})",
                    chunk,
                ).fetchone()
                conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                count += n
                nbytes += b
            newest = self._newest_pending(conn)
        self.freed_since_compact += nbytes
        return Acked(count, nbytes, newest, self.freed_since_compact >= COMPACT_AFTER_BYTES)

    def run_started(self, run: str, board: str, command_json: str) -> None:
        now = time.time()
        try:
            with self.transaction() as conn:
                conn.execute(
                    "INSERT INTO runs (run, board, command, last_seq, started, updated) "
                    "VALUES (?, ?, ?, NULL, ?, ?)",
                    (run, board, command_json, now, now),
                )
        except sqlite3.IntegrityError as exc:
            raise JournalError(self.path, f"run {run!r} is already in flight") from exc

    def run_finished(self, run: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM runs WHERE run = ?", (run,))

    def runs_in_flight(self) -> list[InFlightRun]:
        rows = self.conn.execute(
            "SELECT run, board, command, last_seq, started, updated FROM runs ORDER BY started"
        )
        return [
            InFlightRun(run, board, json.loads(command), last_seq, started, updated)
            for run, board, command, last_seq, started, updated in rows
        ]

    def command_outcome(self, command_id: str) -> str | None:
        row = self.conn.execute(
            "SELECT outcome FROM commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        return row[0] if row else None

    def record_command(self, command_id: str, outcome: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO commands (command_id, outcome, recorded, n) "
                "VALUES (?, ?, ?, (SELECT coalesce(max(n), 0) + 1 FROM commands)) "
                "ON CONFLICT (command_id) DO UPDATE SET "
                "outcome = excluded.outcome, recorded = excluded.recorded, n = excluded.n",
                (command_id, outcome, time.time()),
            )
            self.recorded_since_prune += 1
            if self.recorded_since_prune >= self.prune_every:
                self._prune_commands(conn)

    def _prune_commands(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM commands WHERE n <= "
            "(SELECT n FROM commands ORDER BY n DESC LIMIT 1 OFFSET ?)",
            (self.commands_kept,),
        )
        self.recorded_since_prune = 0

    def compact(self) -> tuple[int, int]:
        conn = self.conn
        before = file_bytes(self.path)
        # Through executescript: a plain execute() steps the pragma once, which frees a
        # single page (it returns no row for fetchall() to step on).
        conn.executescript("PRAGMA incremental_vacuum;")
        # TRUNCATE: a passive checkpoint would leave the WAL file at its high-water mark.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self.freed_since_compact = 0
        return before, file_bytes(self.path)

    def close(self) -> tuple[int, int] | None:
        conn = self.conn
        try:
            if self.recorded_since_prune:
                with self.transaction():
                    self._prune_commands(conn)
            return self.compact() if self.freed_since_compact else None
        finally:
            self._conn = None
            conn.close()
