"""The agent's journal on real SQLite files: outbox order and counters, runs in flight across
a close and a SIGKILL, command idempotency, backpressure, compaction, refusing bad files, and
every SQLite call on the worker thread."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agent.journal import Journal
from agent.journal_store import JournalError, entry_bytes


@pytest.fixture
def path(tmp_path: Path) -> Path:
    # A missing parent directory: open creates it.
    return tmp_path / "agent" / "journal.sqlite"


@pytest.fixture
async def journal(path: Path) -> AsyncIterator[Journal]:
    journal = await Journal.open(path)
    yield journal
    await journal.close()


async def test_enqueue_pending_ack_keep_id_order(journal: Journal) -> None:
    first = await journal.enqueue("farm/a", b"one")
    more = await journal.enqueue_many([("farm/b", b"two"), ("farm/c", b"three")], run="r1")
    assert more == [first + 1, first + 2]

    entries = await journal.pending()
    assert [(e.id, e.topic, e.payload, e.run) for e in entries] == [
        (first, "farm/a", b"one", None),
        (first + 1, "farm/b", b"two", "r1"),
        (first + 2, "farm/c", b"three", "r1"),
    ]
    assert [e.id for e in await journal.pending(after_id=first, limit=1)] == [first + 1]
    assert journal.backlog_count == 3
    assert journal.backlog_bytes == sum(entry_bytes(e.topic, e.payload) for e in entries)

    await journal.ack([first + 1, first + 1, 999])  # duplicates and unknown ids are ignored
    assert [e.id for e in await journal.pending()] == [first, first + 2]
    assert journal.backlog_count == 2
    assert journal.backlog_bytes == entry_bytes("farm/a", b"one") + entry_bytes("farm/c", b"three")
    assert await journal.enqueue_many([]) == []


async def test_counters_survive_reopen_and_ids_are_never_reused(path: Path) -> None:
    journal = await Journal.open(path)
    ids = await journal.enqueue_many([("t", bytes(100)) for _ in range(5)])
    await journal.ack(ids[:2])
    await journal.close()

    journal = await Journal.open(path)
    assert journal.backlog_count == 3
    assert journal.backlog_bytes == 3 * entry_bytes("t", bytes(100))
    await journal.ack(ids)
    await journal.close()

    # Even with the outbox empty across a restart, ids keep increasing.
    journal = await Journal.open(path)
    assert (journal.backlog_count, journal.backlog_bytes) == (0, 0)
    assert await journal.enqueue("t", b"x") == ids[-1] + 1
    await journal.close()


async def test_last_seq_is_journalled_with_the_samples(path: Path) -> None:
    journal = await Journal.open(path)
    await journal.run_started("r1", "board-1", {"id": "c1", "mode": "performance"})
    await journal.run_started("r2", "board-2", {"id": "c2"})
    with pytest.raises(JournalError, match="already in flight"):
        await journal.run_started("r1", "board-1", {"id": "c1"})
    with pytest.raises(ValueError, match="run"):
        await journal.enqueue("t", b"s", last_seq=1)

    await journal.enqueue("farm/r1/samples", b"s1", run="r1", last_seq=1)
    await journal.enqueue_many([("farm/r1/samples", b"s2"), ("farm/r1/samples", b"s3")], run="r1")
    await journal.enqueue_many(
        [("farm/r1/samples", b"s4"), ("farm/r1/samples", b"s5")], run="r1", last_seq=5
    )
    await journal.run_finished("r2")
    await journal.run_finished("r2")  # idempotent
    await journal.close()  # r1 never finished: what a crash leaves behind

    journal = await Journal.open(path)
    [run] = await journal.runs_in_flight()
    assert (run.run, run.board, run.command, run.last_seq) == (
        "r1",
        "board-1",
        {"id": "c1", "mode": "performance"},
        5,
    )
    assert run.started <= run.updated
    assert [e.payload for e in await journal.pending() if e.run == "r1"] == [
        b"s1",
        b"s2",
        b"s3",
        b"s4",
        b"s5",
    ]
    await journal.run_finished("r1")
    assert await journal.runs_in_flight() == []
    await journal.close()


CRASH_SCRIPT = """
import asyncio, sys
from pathlib import Path
from agent.journal import Journal

async def main():
    journal = await Journal.open(Path(sys.argv[1]))
    await journal.run_started("r1", "board-1", {"id": "c1"})
    seq = 0
    while True:
        seq += 1
        payload = b"%08d" % seq + bytes(2000)
        entry_id = await journal.enqueue("farm/r1/samples", payload, run="r1", last_seq=seq)
        sys.stdout.write(f"{entry_id} {seq}\\n")
        sys.stdout.flush()

asyncio.run(main())
"""


async def test_sigkill_mid_run_loses_no_committed_entry(path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH_SCRIPT, str(path), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        head = [await proc.stdout.readline() for _ in range(300)]
        proc.send_signal(signal.SIGKILL)
        rest = await proc.stdout.read()
        assert await proc.wait() == -signal.SIGKILL
    # Each line was written after its commit; a few more may have committed unprinted.
    printed = {
        int(entry_id): int(seq)
        for entry_id, seq in (line.split() for line in b"".join([*head, rest]).splitlines())
    }

    journal = await Journal.open(path)
    try:
        entries = await journal.pending(limit=100_000)
        seqs = {e.id: int(e.payload[:8]) for e in entries}
        assert list(seqs.values()) == list(range(1, len(seqs) + 1))
        assert printed.items() <= seqs.items()
        [run] = await journal.runs_in_flight()
        assert run.last_seq == len(seqs)
        assert journal.backlog_count == len(entries)
    finally:
        await journal.close()


async def test_command_ids_are_remembered_and_pruned_to_the_newest(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite", commands_kept=10)
    assert await journal.command_outcome("c0") is None
    for i in range(25):
        await journal.record_command(f"c{i}", "accepted")
    assert [await journal.command_outcome(f"c{i}") for i in range(25)] == [None] * 15 + [
        "accepted"
    ] * 10

    # Recording again updates the outcome and makes the id the newest.
    await journal.record_command("c20", "done")
    for i in range(25, 30):
        await journal.record_command(f"c{i}", "accepted")
    kept = {f"c{i}" for i in range(30) if await journal.command_outcome(f"c{i}") is not None}
    assert kept == {f"c{i}" for i in range(20, 30)}
    assert await journal.command_outcome("c20") == "done"
    await journal.close()

    # Pruning every tenth of commands_kept records; close prunes the remainder.
    journal = await Journal.open(tmp_path / "k.sqlite", commands_kept=100)
    for i in range(155):
        await journal.record_command(f"c{i}", "accepted")
    await journal.close()
    journal = await Journal.open(tmp_path / "k.sqlite", commands_kept=100)
    outcomes = [await journal.command_outcome(f"c{i}") for i in range(155)]
    assert outcomes == [None] * 55 + ["accepted"] * 100
    await journal.close()


async def test_wait_for_space_blocks_until_an_ack_frees_space(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite", max_bytes=1000)
    first = await journal.enqueue("t", bytes(600))
    await asyncio.wait_for(journal.wait_for_space(), 1)
    await journal.enqueue("t", bytes(600))
    assert journal.backlog_bytes >= journal.max_bytes

    waiter = asyncio.create_task(journal.wait_for_space())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await journal.ack([first])
    await asyncio.wait_for(waiter, 1)
    await journal.close()


async def test_wait_for_messages_wakes_on_enqueue(journal: Journal) -> None:
    first = await journal.enqueue("t", b"x")
    # Already there: no wait.
    assert await asyncio.wait_for(journal.wait_for_messages(0), 1) == first

    waiter = asyncio.create_task(journal.wait_for_messages(first))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    second = await journal.enqueue("t", b"y")
    assert await asyncio.wait_for(waiter, 1) == second

    # Acknowledged entries do not count: a sender restarting from 0 after everything was
    # acknowledged waits for the next enqueue rather than spinning on an empty outbox.
    await journal.ack([first, second])
    waiter = asyncio.create_task(journal.wait_for_messages(0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    third = await journal.enqueue("t", b"z")
    assert await asyncio.wait_for(waiter, 1) == third


async def test_close_wakes_waiters_with_an_error(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite", max_bytes=10)
    await journal.enqueue("t", bytes(100))
    space = asyncio.create_task(journal.wait_for_space())
    messages = asyncio.create_task(journal.wait_for_messages(10**9))
    await asyncio.sleep(0.01)
    await journal.close()
    for task in (space, messages):
        with pytest.raises(JournalError, match="closed"):
            await asyncio.wait_for(task, 1)
    with pytest.raises(JournalError, match="closed"):
        await journal.enqueue("t", b"x")
    await journal.close()  # idempotent


async def test_cancelled_callers_leave_the_counters_exact(journal: Journal) -> None:
    tasks = [asyncio.create_task(journal.enqueue("t", bytes(i))) for i in range(1, 61)]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    # Queued after every enqueue job, so all of those that ran have been counted by now.
    entries = await journal.pending(limit=1000)
    assert journal.backlog_count == len(entries)
    assert journal.backlog_bytes == sum(entry_bytes(e.topic, e.payload) for e in entries)
    assert await asyncio.wait_for(journal.wait_for_messages(0), 1) == entries[-1].id


async def test_a_cancelled_caller_still_gets_its_write_committed(journal: Journal) -> None:
    # Sixty writes queue behind each other on the one worker thread; cancelling their
    # callers (a run cancelled, the agent stopping) must not drop the ones not yet started:
    # the samples they carry were already handed over.
    tasks = [asyncio.create_task(journal.enqueue("t", bytes(i))) for i in range(1, 61)]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    entries = await journal.pending(limit=1000)
    assert sorted(len(e.payload) for e in entries) == list(range(1, 61))


async def test_compaction_gives_the_space_back(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    payload = bytes(range(256)) * 80  # 20 KiB
    ids: list[int] = []
    for _ in range(10):
        ids += await journal.enqueue_many([("farm/r1/samples", payload)] * 100)
    full = journal.file_bytes()
    assert full > 20 * 10**6

    with caplog.at_level(logging.INFO, logger="agent.journal"):
        await journal.ack(ids)  # frees more than COMPACT_AFTER_BYTES: compacts by itself
    assert journal.file_bytes() < 10**6
    assert any(
        isinstance(r.msg, dict) and r.msg.get("event") == "journal_compact" for r in caplog.records
    )

    # An explicit compaction of an already compact file is harmless.
    await journal.compact()
    assert journal.file_bytes() < 10**6


async def test_close_compacts_what_was_freed_below_the_threshold(path: Path) -> None:
    journal = await Journal.open(path)
    ids = await journal.enqueue_many([("t", bytes(20_000))] * 100)  # 2 MB: no auto compaction
    await journal.ack(ids)
    assert journal.file_bytes() > 2 * 10**6
    await journal.close()
    assert journal.file_bytes() < 10**6


async def test_file_settings(path: Path) -> None:
    journal = await Journal.open(path)
    await journal.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)


async def test_start_generations_grow_even_when_the_clock_goes_back(path: Path) -> None:
    journal = await Journal.open(path)
    assert await journal.next_generation(1_800_000_000.0) == 1_800_000_000.0
    await journal.close()

    # A Pi without a real-time clock boots an hour behind: the next start still comes later.
    journal = await Journal.open(path)
    assert await journal.next_generation(1_799_996_400.0) == 1_800_000_001.0
    await journal.close()

    # Once the clock is right again it leads.
    journal = await Journal.open(path)
    assert await journal.next_generation(1_800_007_200.0) == 1_800_007_200.0
    await journal.close()


async def test_a_version_1_journal_is_upgraded_with_its_backlog(path: Path) -> None:
    journal = await Journal.open(path)
    ids = await journal.enqueue_many([("t", b"kept"), ("t", b"also kept")])
    await journal.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE generation")
        conn.execute("PRAGMA user_version = 1")

    journal = await Journal.open(path)
    assert [(e.id, e.payload) for e in await journal.pending()] == [
        (ids[0], b"kept"),
        (ids[1], b"also kept"),
    ]
    assert await journal.next_generation(5.0) == 5.0
    await journal.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)


async def test_a_newer_schema_is_refused_naming_the_file(path: Path) -> None:
    journal = await Journal.open(path)
    await journal.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(JournalError, match=re.escape(str(path)) + ".*newer"):
        await Journal.open(path)


async def test_a_garbage_file_is_refused_and_left_untouched(path: Path) -> None:
    path.parent.mkdir()
    garbage = b"not a database at all\n" * 200
    await asyncio.to_thread(path.write_bytes, garbage)
    with pytest.raises(JournalError, match=re.escape(str(path)) + ".*not a usable journal"):
        await Journal.open(path)
    assert await asyncio.to_thread(path.read_bytes) == garbage


async def test_another_sqlite_file_is_refused(path: Path) -> None:
    path.parent.mkdir()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE mine (x)")
    with pytest.raises(JournalError, match=re.escape(str(path)) + ".*not a tinyfarm journal"):
        await Journal.open(path)


async def test_sqlite_runs_only_on_the_worker_thread(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[int] = set()
    statements: list[str] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        threads.add(threading.get_ident())

        def trace(sql: str) -> None:
            # Called on the thread that executes the statement.
            threads.add(threading.get_ident())
            statements.append(sql)

        conn.set_trace_callback(trace)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    journal = await Journal.open(path, max_bytes=10**6)
    await journal.run_started("r1", "b1", {"id": "c1"})
    ids = await journal.enqueue_many([("t", bytes(10))] * 3, run="r1", last_seq=3)
    await journal.pending()
    await journal.ack(ids)
    await journal.runs_in_flight()
    await journal.run_finished("r1")
    await journal.record_command("c1", "done")
    await journal.command_outcome("c1")
    await journal.wait_for_space()
    await journal.compact()
    await journal.close()

    assert len(statements) > 10
    assert len(threads) == 1
    assert threading.get_ident() not in threads
