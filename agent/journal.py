"""The agent's local journal: what must survive a broker outage or an agent restart.

Three things live in one SQLite file (standard library ``sqlite3``):

* the **outbox**: every sample and run event is stored here first, published at QoS 1, and
  deleted when the broker acknowledges it; during an outage entries accumulate (bounded by
  ``max_bytes``, which the board runners turn into backpressure) and are resent in id order;
* the **runs in flight**, with the last seq journalled for each, so that a restarted agent
  can report them as interrupted at the right place;
* the **command ids** seen and their outcome, so that a repeated command is never executed
  twice.

A sender task's loop::

    cursor = 0  # and again from 0 after each reconnection: resend what is unacknowledged
    while True:
        await journal.wait_for_messages(cursor)
        for entry in await journal.pending(cursor):
            ...publish at QoS 1, ack(entry.id) on PUBACK...
            cursor = entry.id

All SQLite work runs on one dedicated worker thread that owns the connection, so a slow SD
card never stalls the event loop. The connection keeps ``check_same_thread`` on: any use from
another thread would raise rather than silently share it. WAL with ``synchronous=NORMAL``
makes every commit durable against a crash or kill of the agent; a power cut may lose the
last few commits but never leaves the file inconsistent, and because a sample and its run's
``last_seq`` are written in one transaction the two never disagree. Needs SQLite >= 3.24
(upsert); no ``RETURNING``, so the older SQLite of a Pi OS build works too.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

from farm.logs import get_logger

log = get_logger("agent.journal")

SCHEMA_VERSION = 1

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

_ENTRY_BYTES_SQL = "length(payload) + length(CAST(topic AS BLOB))"

T = TypeVar("T")


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


def _file_bytes(path: Path) -> int:
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        # The WAL is absent after a clean close.
        with suppress(FileNotFoundError):
            total += part.stat().st_size
    return total


@dataclass(frozen=True)
class _Acked:
    count: int
    nbytes: int
    newest_pending: int
    compact_due: bool


@dataclass(frozen=True)
class _Opened:
    backlog_count: int
    backlog_bytes: int
    newest_pending: int
    runs_in_flight: int


class _Store:
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

    def open(self) -> _Opened:
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
        if version == 0:
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _state(self) -> _Opened:
        conn = self.conn
        count, nbytes = conn.execute(
            f"SELECT count(*), coalesce(sum({_ENTRY_BYTES_SQL}), 0) FROM outbox"
        ).fetchone()
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        return _Opened(count, nbytes, self._newest_pending(conn), runs)

    @staticmethod
    def _newest_pending(conn: sqlite3.Connection) -> int:
        # max() of the rowid is one B-tree descent.
        return conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]

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

    def ack(self, ids: list[int]) -> _Acked:
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
        return _Acked(count, nbytes, newest, self.freed_since_compact >= COMPACT_AFTER_BYTES)

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
        before = _file_bytes(self.path)
        # Through executescript: a plain execute() steps the pragma once, which frees a
        # single page (it returns no row for fetchall() to step on).
        conn.executescript("PRAGMA incremental_vacuum;")
        # TRUNCATE: a passive checkpoint would leave the WAL file at its high-water mark.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self.freed_since_compact = 0
        return before, _file_bytes(self.path)

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


class Journal:
    """The agent's journal: outbox, runs in flight and command ids, in one SQLite file.

    Open with :meth:`open`, close with :meth:`close`. Safe to use from many tasks of one event
    loop; every call is executed in order on the journal's single worker thread.
    """

    def __init__(
        self, path: Path, *, max_bytes: int, commands_kept: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Use :meth:`open`, which also opens the file."""
        if max_bytes <= 0 or commands_kept <= 0:
            raise ValueError("max_bytes and commands_kept must be positive")
        self.path = path
        self.max_bytes = max_bytes
        self._loop = loop
        self._store = _Store(path, commands_kept)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._closed = False
        self._backlog_count = 0
        self._backlog_bytes = 0
        # The highest unacknowledged id (0: none), what wait_for_messages() waits on.
        self._newest_pending = 0
        self._space = asyncio.Event()
        self._space.set()
        self._new = asyncio.Event()

    @classmethod
    async def open(
        cls, path: Path, *, max_bytes: int = 256 * 2**20, commands_kept: int = 10_000
    ) -> Journal:
        """Open (or create, with its parent directories) the journal at ``path``.

        ``max_bytes`` bounds the outbox (see :meth:`wait_for_space`); ``commands_kept`` is how
        many command ids are remembered. Raises :class:`JournalError` naming the file if it is
        not a journal, is corrupt, or was written by a newer agent.
        """
        journal = cls(
            path,
            max_bytes=max_bytes,
            commands_kept=commands_kept,
            loop=asyncio.get_running_loop(),
        )
        try:
            opened = await journal._submit(journal._store.open)
        except BaseException:
            journal._closed = True
            journal._executor.shutdown(wait=False)
            raise
        journal._backlog_count = opened.backlog_count
        journal._backlog_bytes = opened.backlog_bytes
        journal._newest_pending = opened.newest_pending
        log.info(
            "journal_open",
            path=path,
            backlog_count=opened.backlog_count,
            backlog_bytes=opened.backlog_bytes,
            runs_in_flight=opened.runs_in_flight,
            file_bytes=journal.file_bytes(),
        )
        journal._update_space()
        return journal

    async def close(self) -> None:
        """Finish queued work, prune, compact if anything was acknowledged since the last
        compaction, and close the file; idempotent. Tasks waiting in :meth:`wait_for_space`
        or :meth:`wait_for_messages` get a :class:`JournalError`."""
        if self._closed:
            return
        self._closed = True
        try:
            sizes = await self._submit(self._store.close)
        finally:
            self._executor.shutdown(wait=False)
            self._space.set()
            self._announce()
        if sizes is not None:
            self._log_compaction(*sizes)
        log.info(
            "journal_close",
            path=self.path,
            backlog_count=self._backlog_count,
            backlog_bytes=self._backlog_bytes,
        )

    # -- outbox -------------------------------------------------------------------------------

    @property
    def backlog_count(self) -> int:
        """Messages stored and not acknowledged (kept in memory, no query)."""
        return self._backlog_count

    @property
    def backlog_bytes(self) -> int:
        """Their size, as :func:`entry_bytes` counts it (kept in memory, no query)."""
        return self._backlog_bytes

    async def enqueue(
        self, topic: str, payload: bytes, *, run: str | None = None, last_seq: int | None = None
    ) -> int:
        """Store one message and return its id (ids only ever increase).

        With ``run`` and ``last_seq``, that run's ``last_seq`` is updated in the same
        transaction if it is in flight, so after a crash the journalled samples and the run's
        last seq agree. Does not wait for space: call :meth:`wait_for_space` first.
        """
        ids = await self.enqueue_many([(topic, payload)], run=run, last_seq=last_seq)
        return ids[0]

    async def enqueue_many(
        self,
        items: list[tuple[str, bytes]],
        *,
        run: str | None = None,
        last_seq: int | None = None,
    ) -> list[int]:
        """Store ``(topic, payload)`` messages in one transaction; return their ids in order.
        ``run`` and ``last_seq`` as for :meth:`enqueue`."""
        if last_seq is not None and run is None:
            raise ValueError("last_seq needs the run it belongs to")
        if not items:
            return []
        ids, _ = await self._call(
            partial(self._store.enqueue, list(items), run, last_seq), then=self._on_enqueued
        )
        return ids

    async def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Up to ``limit`` unacknowledged messages with ids above ``after_id``, in id order."""
        return await self._call(partial(self._store.pending, after_id, limit))

    async def ack(self, ids: Iterable[int]) -> None:
        """Delete acknowledged messages (unknown or already deleted ids are ignored), waking
        :meth:`wait_for_space` once below ``max_bytes``. Compacts the file once
        :data:`COMPACT_AFTER_BYTES` have been freed since the last compaction."""
        id_list = list(ids)
        if not id_list:
            return
        # Compaction is a job of its own so that the counters and wait_for_space() waiters
        # see the ack before the (slower) vacuum runs.
        acked = await self._call(partial(self._store.ack, id_list), then=self._on_acked)
        if acked.compact_due:
            await self.compact()

    async def wait_for_space(self) -> None:
        """Return at once while ``backlog_bytes < max_bytes``; otherwise wait until acks bring
        it below. The board runners call this before each enqueue, so a long broker outage
        pauses a run instead of losing samples or filling the SD card. A soft bound: tasks
        released together may each enqueue before the next check."""
        while self._backlog_bytes >= self.max_bytes:
            self._check_open()
            await self._space.wait()
        self._check_open()

    async def wait_for_messages(self, after_id: int) -> int:
        """Wait until an unacknowledged message with an id above ``after_id`` exists; return
        the highest such id."""
        while self._newest_pending <= after_id:
            self._check_open()
            await self._new.wait()
        return self._newest_pending

    # -- runs in flight -----------------------------------------------------------------------

    async def run_started(self, run: str, board: str, command: dict[str, Any]) -> None:
        """Record that ``run`` started on ``board`` from ``command`` (a JSON object). Raises
        :class:`JournalError` if that run is already in flight."""
        # Serialised here, not on the worker: the caller's dict is snapshotted at call time
        # and a non-JSON value fails in the caller's frame.
        command_json = json.dumps(command, separators=(",", ":"))
        await self._call(partial(self._store.run_started, run, board, command_json))

    async def run_finished(self, run: str) -> None:
        """Forget ``run`` (finished, failed, or reported as interrupted); idempotent."""
        await self._call(partial(self._store.run_finished, run))

    async def runs_in_flight(self) -> list[InFlightRun]:
        """Runs started and not finished, oldest first (after a restart: interrupted)."""
        return await self._call(self._store.runs_in_flight)

    # -- commands -----------------------------------------------------------------------------

    async def command_outcome(self, command_id: str) -> str | None:
        """The outcome recorded for ``command_id``, or ``None`` if it was never seen."""
        return await self._call(partial(self._store.command_outcome, command_id))

    async def record_command(self, command_id: str, outcome: str) -> None:
        """Record (or update) a command's outcome, e.g. ``"accepted"``, ``"rejected: ..."``,
        ``"done"``. The newest ``commands_kept`` ids are kept; older ones are pruned every
        tenth of that many records (and at close), so up to 10 % more may be remembered."""
        await self._call(partial(self._store.record_command, command_id, outcome))

    # -- file ---------------------------------------------------------------------------------

    async def compact(self) -> None:
        """Give the pages freed by acks back to the file system and truncate the WAL."""
        self._log_compaction(*await self._call(self._store.compact))

    def file_bytes(self) -> int:
        """Size on disk of the database and its WAL."""
        return _file_bytes(self.path)

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(self.path, "journal is closed")

    async def _call(self, fn: Callable[[], T], *, then: Callable[[T], None] | None = None) -> T:
        self._check_open()
        return await self._submit(fn, then=then)

    async def _submit(self, fn: Callable[[], T], *, then: Callable[[T], None] | None = None) -> T:
        loop = self._loop

        def job() -> T:
            result = fn()
            if then is not None:
                # Scheduled from the worker rather than after the await: a caller cancelled
                # while its job runs must still have the committed rows counted. It runs
                # before the caller resumes (the result is delivered by a later callback).
                loop.call_soon_threadsafe(then, result)
            return result

        # Shielded: cancelling the caller must not drop a write that is still queued behind
        # other journal work (the samples it carries were already handed over).
        future = loop.run_in_executor(self._executor, job)
        try:
            return await asyncio.shield(future)
        except sqlite3.Error as exc:
            raise JournalError(self.path, f"{type(exc).__name__}: {exc}") from exc

    def _on_enqueued(self, result: tuple[list[int], int]) -> None:
        ids, nbytes = result
        self._backlog_count += len(ids)
        self._backlog_bytes += nbytes
        self._newest_pending = ids[-1]
        self._update_space()
        self._announce()

    def _on_acked(self, acked: _Acked) -> None:
        self._backlog_count -= acked.count
        self._backlog_bytes -= acked.nbytes
        self._newest_pending = acked.newest_pending
        self._update_space()

    def _announce(self) -> None:
        # A fresh event per announcement: every waiter holds the one being set, and nobody
        # has to clear an event another waiter has not seen yet.
        event, self._new = self._new, asyncio.Event()
        event.set()

    def _update_space(self) -> None:
        full = self._backlog_bytes >= self.max_bytes
        if full and self._space.is_set():
            self._space.clear()
            log.warning(
                "journal_full",
                path=self.path,
                backlog_count=self._backlog_count,
                backlog_bytes=self._backlog_bytes,
                max_bytes=self.max_bytes,
            )
        elif not full and not self._space.is_set():
            self._space.set()
            log.info(
                "journal_space",
                path=self.path,
                backlog_count=self._backlog_count,
                backlog_bytes=self._backlog_bytes,
            )

    def _log_compaction(self, before: int, after: int) -> None:
        log.info("journal_compact", path=self.path, bytes_before=before, bytes_after=after)
