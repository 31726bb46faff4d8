"""A console session's wire side, sans-IO: numbered lines in, bytes for the DUT out; bytes from
the DUT in, text lines out.

The agent feeds it what ``farm board console`` sends (``ConsoleCommand`` lines, each with its
``seq``) and what the serial port delivers. A line is written once, however often it arrives
(an MQTT QoS 1 redelivery repeats it), and only in order: a line whose predecessors are
missing waits for them. Output is framed on LF like every other link (CR and NUL dropped,
bytes kept as latin-1 text); :meth:`ConsoleWire.flush` hands over a partial line (a prompt
without a line end) once the DUT has gone quiet.
"""

from __future__ import annotations

from farm.protocol.lines import LineFramer, text


class ConsoleWire:
    """One session's line numbering and output framing (see the module docstring)."""

    def __init__(self, eol: str = "%") -> None:
        self.eol = eol.encode("latin-1")
        self.written = 0
        """The seq of the last line handed out for the wire (lines are numbered from 1)."""
        self._waiting: dict[int, str] = {}
        self._framer = LineFramer()

    def send(self, seq: int, line: str) -> bytes:
        """The bytes to write for line ``seq`` and every waiting line it completes (empty
        when ``seq`` was already written or a line before it is still missing)."""
        if seq <= self.written:
            return b""
        self._waiting[seq] = line
        out = bytearray()
        while (following := self.written + 1) in self._waiting:
            out += self._waiting.pop(following).encode("latin-1", "replace") + self.eol
            self.written = following
        return bytes(out)

    @property
    def missing(self) -> int:
        """Lines received ahead of one not received yet."""
        return len(self._waiting)

    def feed(self, data: bytes) -> list[str]:
        """The DUT's complete lines among ``data``."""
        return [text(line) for line in self._framer.feed(data)]

    def flush(self) -> list[str]:
        """The partial line received so far, if any (the DUT went quiet without a line end)."""
        pending = self._framer.pending
        if not pending:
            return []
        self._framer = LineFramer()
        return [text(pending.translate(None, b"\r\x00"))]
