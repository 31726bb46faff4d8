"""Timestamped byte transcripts of a simulated serial link, for debugging and replay.

One JSON object per line: ``{"t": seconds since the transcript started, "dir": "rx" | "tx",
"hex": the bytes in hex, "text": the bytes decoded as latin-1}``. ``hex`` is authoritative;
``text`` is for a human reading the file (latin-1 maps every byte, JSON escapes the control
characters). ``rx`` is host -> device, ``tx`` device -> host.

Recording must not slow down or block the event loop that paces the wire, so :meth:`record`
only enqueues; a writer thread encodes, writes, and flushes at most every ~100 ms.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from farm.logs import get_logger

log = get_logger(__name__)

Direction = Literal["rx", "tx"]

#: Longest time a recorded byte may sit in memory before it reaches the file.
FLUSH_INTERVAL = 0.1

_STOP = object()


@dataclass(frozen=True, slots=True)
class TranscriptRecord:
    """One recorded chunk: ``t`` seconds after the transcript started, direction, bytes."""

    t: float
    dir: Direction
    data: bytes


class Transcript:
    """Records the bytes of one link both ways.

    Times passed to :meth:`record` are on the event-loop clock (``loop.time()``, which is
    ``time.monotonic()`` on the default loop) and are stored relative to the transcript start.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._start = time.monotonic()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        # Opened here, not in the thread, so that a bad path fails at construction.
        self._file = self.path.open("w", encoding="utf-8")
        self._thread = threading.Thread(
            target=self._run, name=f"transcript-{self.path.name}", daemon=True
        )
        self._thread.start()

    @property
    def start(self) -> float:
        """Monotonic-clock time the transcript's ``t`` values are relative to."""
        return self._start

    def record(self, direction: Direction, data: bytes, t: float | None = None) -> None:
        """Record ``data`` sent in ``direction`` at monotonic time ``t`` (default: now).

        Never blocks; ignored after :meth:`close`.
        """
        if self._closed or not data:
            return
        if t is None:
            t = time.monotonic()
        self._queue.put((t - self._start, direction, bytes(data)))

    def close(self) -> None:
        """Write out everything recorded, close the file, stop the writer thread. Idempotent.

        Waits for the final write, which is bounded by what was recorded in the last
        :data:`FLUSH_INTERVAL`.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    async def aclose(self) -> None:
        """:meth:`close` from a coroutine, without blocking the event loop on the final
        write."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Transcript:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        stop = False
        try:
            while not stop:
                batch: list[str] = []
                item = self._queue.get()
                deadline = time.monotonic() + FLUSH_INTERVAL
                # Gather for one flush interval so a busy link costs one write per ~100 ms.
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(_encode(item))  # type: ignore[arg-type]
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if batch:
                    self._file.write("".join(batch))
                    self._file.flush()
        except Exception:
            log.exception("transcript_write_failed", path=self.path)
        finally:
            self._file.close()


def _encode(item: tuple[float, Direction, bytes]) -> str:
    t, direction, data = item
    rec = {"t": round(t, 6), "dir": direction, "hex": data.hex(), "text": data.decode("latin-1")}
    return json.dumps(rec, ensure_ascii=True) + "\n"


def read_transcript(path: str | Path) -> Iterator[TranscriptRecord]:
    """Yield the records of a transcript file in order (blank lines are skipped)."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            yield TranscriptRecord(float(rec["t"]), rec["dir"], bytes.fromhex(rec["hex"]))
