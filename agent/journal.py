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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from agent.journal_store import (
    Acked,
    InFlightRun,
    JournalError,
    OutboxEntry,
    Store,
    file_bytes,
)
from farm.logs import get_logger

log = get_logger("agent.journal")

T = TypeVar("T")


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
        self._store = Store(path, commands_kept)
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
        :data:`agent.journal_store.COMPACT_AFTER_BYTES` have been freed since the last
        compaction."""
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

    async def next_generation(self, now: float) -> float:
        """A start generation greater than any this journal handed out before (see
        :meth:`agent.journal_store.Store.next_generation`)."""
        return await self._call(partial(self._store.next_generation, now))

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
        return file_bytes(self.path)

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

    def _on_acked(self, acked: Acked) -> None:
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
