"""Line framing shared by every serial protocol: sans-IO, never fails on any byte."""

from __future__ import annotations

_NO_MAP = None
# The official runner drops CR and NUL from every line; we do the same so that CRLF and the
# firmware's LF-only lines frame identically and a NUL after an LPM01A TimeStamp line is harmless.
_DROP = b"\r\x00"

#: A line longer than this without an LF is garbage (no device line comes near it); it is cut
#: and returned so that a device spewing noise cannot grow memory without bound.
MAX_LINE = 4096


class LineFramer:
    """Split a byte stream into lines.

    LF ends a line; CR and NUL are removed; the LF itself is not part of the line. Bytes are
    kept as bytes: callers decode with :func:`text` (latin-1, which maps every byte).
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every line completed by them, in order."""
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        # One split in C rather than a find per line: a serial read usually holds one whole
        # line, and this runs for every read the agent makes.
        *complete, rest = data.split(b"\n")
        lines = [line.translate(_NO_MAP, _DROP) for line in complete]
        if not rest:
            return lines
        self._buf += rest
        while len(self._buf) > self._max_line:
            lines.append(bytes(self._buf[: self._max_line]).translate(_NO_MAP, _DROP))
            del self._buf[: self._max_line]
        return lines

    @property
    def pending(self) -> bytes:
        """Bytes received after the last LF (a partial line)."""
        return bytes(self._buf)

    def reset(self) -> bytes:
        """Forget the partial line (after a resync); return what was dropped."""
        dropped = bytes(self._buf)
        self._buf.clear()
        return dropped


def text(line: bytes) -> str:
    """Decode a line for display and matching; latin-1 maps every byte, so this never fails."""
    return line.decode("latin-1")


#: The bytes a device line may hold: printable ASCII and tab.
_CLEAN = bytes([0x09, *range(0x20, 0x7F)])


def is_clean(line: bytes) -> bool:
    """True if the line holds only printable ASCII (what every device line is made of)."""
    # Deleting every allowed byte in C leaves nothing for a clean line (a per-byte Python
    # test was a tenth of the agent's reply parsing).
    return not line.translate(None, _CLEAN)
