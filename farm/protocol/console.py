"""A console session's wire side, sans-IO: numbered lines in, bytes for the DUT out; bytes from
the DUT in, text lines out.

The agent hands it what ``farm board console`` sends (``ConsoleCommand`` lines, each with its
``seq``) and what the serial port delivers, and writes what :meth:`ConsoleWire.to_write`
returns. A line is written once, however often it arrives (an MQTT QoS 1 redelivery repeats
it), and only in order: a line whose predecessors are missing waits for them.

Pacing: a DUT busy answering reads nothing (the reference firmware's UART is not buffered
while it prints), so a second command typed ahead would be lost. With a ``ready`` line (the
reference firmware's ``m-ready``, which ends every reply) each line waits until the DUT has
printed it after the previous one; the agent gives up waiting (:meth:`ConsoleWire.stop_waiting`)
after a while, for a DUT that never says it. Without one, lines go out as they come.

Output is framed on LF like every other link (CR and NUL dropped, bytes kept as latin-1
text); :meth:`ConsoleWire.flush` hands over a partial line (a prompt without a line end) once
the DUT has gone quiet.
"""

from __future__ import annotations

from farm.protocol.lines import LineFramer, text


class ConsoleWire:
    """One session's line numbering, pacing and output framing (see the module docstring)."""

    def __init__(self, eol: str = "%", ready: str | None = "m-ready") -> None:
        self.eol = eol.encode("latin-1")
        self.ready = ready
        self.written = 0
        """The seq of the last line handed out for the wire (lines are numbered from 1)."""
        self.waiting = False
        """A line was written and the DUT has not printed ``ready`` since."""
        self._lines: dict[int, str] = {}
        self._framer = LineFramer()

    def receive(self, seq: int, line: str) -> None:
        """Line ``seq`` from the holder (a repeat of one already received is ignored)."""
        if seq > self.written:
            self._lines.setdefault(seq, line)

    @property
    def pending(self) -> int:
        """Lines received and not written yet."""
        return len(self._lines)

    def to_write(self) -> bytes:
        """The bytes to write now: the next line(s) in order, as pacing allows (empty when
        none is due)."""
        out = bytearray()
        while not self.waiting and (following := self.written + 1) in self._lines:
            out += self._lines.pop(following).encode("latin-1", "replace") + self.eol
            self.written = following
            self.waiting = self.ready is not None
        return bytes(out)

    def stop_waiting(self) -> None:
        """Write the next line without the DUT's ``ready`` (it did not come in time)."""
        self.waiting = False

    def feed(self, data: bytes) -> list[str]:
        """The DUT's complete lines among ``data`` (a ``ready`` line lets the next line go)."""
        lines = [text(line) for line in self._framer.feed(data)]
        if self.ready is not None and self.ready in lines:
            self.waiting = False
        return lines

    def flush(self) -> list[str]:
        """The partial line received so far, if any (the DUT went quiet without a line end)."""
        pending = self._framer.pending
        if not pending:
            return []
        self._framer = LineFramer()
        return [text(pending.translate(None, b"\r\x00"))]
