"""Wire-time pacing shared by every simulated UART (``PtyPort`` and ``wire_pair`` ends).

A pty or an in-process queue moves bytes instantly; a UART does not. :class:`TxPacer` releases
a device's output byte by byte at its 8N1 wire time (in bursts, so the event loop is not woken
per byte), and :class:`RxBuffer` holds received bytes stamped with their wire arrival time and
hands them to the device only once that time has passed. All times are event-loop clock seconds
(``loop.time()``, monotonic).
"""

from __future__ import annotations

import asyncio
import bisect
import random
from array import array
from collections.abc import Awaitable, Callable

from farm.wire import char_time

#: Shortest sleep between output bursts. Below ~1 ms the event loop (epoll timeouts are in
#: whole milliseconds) cannot honour the deadline anyway, and waking per byte at 921600 baud
#: would burn a core; a 1 ms burst is also what a USB full-speed serial adapter delivers.
MIN_SLEEP = 0.001

# Guards the float division that decides which bytes are due: without it a byte due exactly
# "now" can round to the previous index and cost a whole extra MIN_SLEEP.
_EPS = 1e-9

#: ``emit(chunk, first_due, char_s)``: deliver ``chunk``, whose first byte was due at
#: ``first_due`` and each following byte ``char_s`` later.
Emit = Callable[[bytes, float, float], Awaitable[None]]


class PortClosedError(ConnectionError):
    """The simulated port was closed while a device read from or wrote to it."""


class TxPacer:
    """Releases output at the line rate: the line is busy until :attr:`tx_free_at`; byte ``i``
    of a write is due at ``max(now, tx_free_at) + (i + 1) * 10 / baud``."""

    def __init__(self) -> None:
        self.tx_free_at = 0.0
        # Writes from several tasks must not interleave on the wire, and a later write must
        # never overtake an earlier one that woke late.
        self._lock = asyncio.Lock()

    async def send(self, data: bytes, baud: int, emit: Emit) -> None:
        """Pace ``data`` at ``baud`` (read once, at the start of the write) through ``emit``.

        Returns once the last byte is due. Bytes are never emitted before they are due; all
        bytes that are due are emitted together, then the pacer sleeps until the next one is
        due (at least :data:`MIN_SLEEP`). If cancelled, the bytes already emitted stay sent.
        """
        if not data:
            return
        data = bytes(data)
        ct = char_time(baud)
        loop = asyncio.get_running_loop()
        async with self._lock:
            start = max(loop.time(), self.tx_free_at)
            n = len(data)
            self.tx_free_at = start + n * ct
            sent = 0
            try:
                while sent < n:
                    now = loop.time()
                    due = min(n, int((now - start) / ct + _EPS))
                    if due > sent:
                        await emit(data[sent:due], start + (sent + 1) * ct, ct)
                        sent = due
                        continue
                    next_due = start + (sent + 1) * ct
                    await asyncio.sleep(max(next_due - now, MIN_SLEEP))
            finally:
                if sent < n:
                    # Cancelled mid-write: the rest never went out, so the line is free as
                    # soon as the last emitted byte has left.
                    self.tx_free_at = start + sent * ct


class RxBuffer:
    """Received bytes not yet read, each stamped with its wire arrival time.

    Stamps never decrease, so "the bytes due by now" is always a prefix. One reader at a time.
    """

    def __init__(self) -> None:
        self.rx_free_at = 0.0
        self._data = bytearray()
        self._stamps = array("d")
        self._arrived = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes, now: float, baud: int) -> None:
        """Bytes handed over instantly at ``now`` (a pty): stamp them as if they had crossed
        the wire at ``baud``, behind any bytes still on the line."""
        if not data:
            return
        ct = char_time(baud)
        base = max(now, self.rx_free_at)
        self._append(data, base + ct, ct)

    def feed_stamped(self, data: bytes, first: float, ct: float) -> None:
        """Bytes whose wire times are known (the sender paced them): the first arrives at
        ``first``, each next one ``ct`` later."""
        if not data:
            return
        # A sender whose baud changed could otherwise stamp before bytes already queued.
        self._append(data, max(first, self.rx_free_at), ct)

    def _append(self, data: bytes, first: float, ct: float) -> None:
        self._data += data
        self._stamps.extend(first + i * ct for i in range(len(data)))
        self.rx_free_at = self._stamps[-1]
        self._arrived.set()

    async def read(self) -> bytes:
        """Wait until at least one byte's arrival time has passed; return every byte due.

        Sleeps once until the first pending byte is due (so later bytes that became due
        meanwhile coalesce into the same read) and never polls. Raises
        :class:`PortClosedError` once the buffer is closed.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise PortClosedError("port closed")
            if self._stamps:
                now = loop.time()
                first = self._stamps[0]
                if first <= now:
                    k = bisect.bisect_right(self._stamps, now)
                    out = bytes(self._data[:k])
                    del self._data[:k]
                    del self._stamps[:k]
                    return out
                await asyncio.sleep(first - now)
                continue
            self._arrived.clear()
            await self._arrived.wait()

    def drop_received_between(self, start: float, end: float, keep: int) -> int:
        """Of the pending bytes stamped in ``[start, end)``, keep the first ``keep`` and drop
        the rest (an RX overrun). Returns how many were dropped."""
        lo = bisect.bisect_left(self._stamps, start)
        hi = bisect.bisect_left(self._stamps, end)
        cut = lo + max(keep, 0)
        if cut >= hi:
            return 0
        del self._data[cut:hi]
        del self._stamps[cut:hi]
        return hi - cut

    def clear(self) -> int:
        """Drop every pending byte; return how many. ``rx_free_at`` is kept: bytes still on
        the line physically occupy it even though the device will never see them."""
        n = len(self._data)
        self._data.clear()
        del self._stamps[:]
        return n

    def close(self) -> None:
        """Drop pending bytes and make current and future :meth:`read` calls raise."""
        self.clear()
        self._closed = True
        self._arrived.set()


#: What a UART at the wrong baud makes of bytes: framing-error noise, never a '%'.
_NOISE = bytes(b for b in range(256) if b != 0x25)


def framing_noise(data: bytes, rng: random.Random) -> bytes:
    """``data`` as a receiver at another baud sees it: one noise byte per byte (so a
    command's ``%`` terminator is never seen and nothing executes)."""
    return bytes(rng.choice(_NOISE) for _ in data)
