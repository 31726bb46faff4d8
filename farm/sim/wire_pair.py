"""An in-process serial wire between two simulated devices.

The interface board's DUT-side UART and the DUT talk over this instead of a pty: same pacing
and arrival stamping as :class:`farm.sim.pty_port.PtyPort`, no file descriptors. Each end has
its own ``baud`` (the interface board's ``setbaud`` changes only its end); a write is paced at
the writer's baud, and :meth:`WireEnd.peer_baud` lets a device model notice a mismatch and
garble the link, as :meth:`PtyPort.host_baud` does for a host.
"""

from __future__ import annotations

from typing import Literal

from farm.sim.pacing import PortClosedError, RxBuffer, TxPacer
from farm.sim.transcript import Transcript


class WireEnd:
    """One end of a :func:`wire_pair`; implements :class:`farm.sim.uart.Uart`."""

    def __init__(
        self, name: str, baud: int, transcript: Transcript | None, tx_dir: Literal["rx", "tx"]
    ) -> None:
        if baud <= 0:
            raise ValueError(f"baud must be positive, got {baud}")
        self.name = name
        self._baud = baud
        self._pacer = TxPacer()
        self._rx = RxBuffer()
        self._peer: WireEnd | None = None
        self._transcript = transcript
        # The pair shares one transcript, written from end "a"'s point of view.
        self._tx_dir: Literal["rx", "tx"] = tx_dir
        self._closed = False

    def __repr__(self) -> str:
        return f"WireEnd({self.name!r}, baud={self._baud})"

    @property
    def baud(self) -> int:
        """This end's line rate; a change applies to writes started afterwards."""
        return self._baud

    @baud.setter
    def baud(self, value: int) -> None:
        if value <= 0:
            raise ValueError(f"baud must be positive, got {value}")
        self._baud = value

    def peer_baud(self) -> int:
        """The other end's line rate (what this end's received bytes were sent at)."""
        assert self._peer is not None
        return self._peer._baud

    @property
    def tx_free_at(self) -> float:
        """Event-loop time at which this end's output line becomes idle."""
        return self._pacer.tx_free_at

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the peer at this end's baud; return when the last byte is due.
        Each byte reaches the peer's input stamped with its wire arrival time."""
        if self._closed:
            raise PortClosedError(f"wire end {self.name} closed")
        await self._pacer.send(data, self._baud, self._emit)

    async def read(self) -> bytes:
        """Return the received bytes whose wire arrival time has passed, waiting for at least
        one. Raises :class:`PortClosedError` once this end is closed."""
        return await self._rx.read()

    def drop_received_between(self, start: float, end: float, keep: int) -> int:
        """Of the pending bytes that arrived in ``[start, end)``, keep the first ``keep`` and
        drop the rest (an RX overrun); return how many were dropped."""
        return self._rx.drop_received_between(start, end, keep)

    def clear_input(self) -> int:
        """Drop every received byte not yet read (a reset); return how many."""
        return self._rx.clear()

    def close(self) -> None:
        """Cut this end: pending and future reads and writes raise :class:`PortClosedError`;
        bytes the peer sends afterwards are lost. Idempotent."""
        self._closed = True
        self._rx.close()

    async def _emit(self, chunk: bytes, first_due: float, char_s: float) -> None:
        if self._closed:
            raise PortClosedError(f"wire end {self.name} closed")
        if self._transcript is not None:
            self._transcript.record(self._tx_dir, chunk, first_due)
        peer = self._peer
        assert peer is not None
        if not peer._closed:
            peer._rx.feed_stamped(chunk, first_due, char_s)


def wire_pair(
    baud: int, *, transcript: Transcript | None = None, names: tuple[str, str] = ("a", "b")
) -> tuple[WireEnd, WireEnd]:
    """Two connected UART ends, both at ``baud`` initially.

    With a ``transcript``, bytes end ``a`` sends are recorded as ``tx`` and bytes end ``b``
    sends as ``rx`` (the transcript reads from ``a``'s point of view).
    """
    a = WireEnd(names[0], baud, transcript, "tx")
    b = WireEnd(names[1], baud, transcript, "rx")
    a._peer, b._peer = b, a
    return a, b
