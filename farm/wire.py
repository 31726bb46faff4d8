"""The wire-time model: how long bytes take on a UART, and the timeouts and ETAs derived from it.

Every wait in tinyfarm is computed here instead of being a bare constant: a serial line moves
one 8N1 character (10 bit times) per 10/baud seconds in each direction, a device needs its
expected compute time on top, and a margin covers host scheduling and USB latency.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bit times per character on an 8N1 line: start bit, 8 data bits, stop bit.
BITS_PER_CHAR = 10


def char_time(baud: int) -> float:
    """Seconds one character occupies the line at ``baud``."""
    if baud <= 0:
        raise ValueError(f"baud must be positive, got {baud}")
    return BITS_PER_CHAR / baud


def wire_time(nbytes: int, baud: int) -> float:
    """Seconds ``nbytes`` characters occupy the line at ``baud``."""
    return nbytes * char_time(baud)


@dataclass(frozen=True, slots=True)
class WireModel:
    """Timeouts for one serial link.

    ``slack`` multiplies the modelled time (a device may be slower than expected, a host may
    be loaded) and ``margin_s`` adds a fixed allowance for USB polling and OS scheduling,
    which do not shrink with the byte count.
    """

    baud: int
    slack: float = 1.5
    margin_s: float = 0.5

    def transfer_time(self, sent: int, received: int) -> float:
        """Modelled seconds for ``sent`` bytes out and ``received`` bytes back (no compute)."""
        return wire_time(sent, self.baud) + wire_time(received, self.baud)

    def expected(self, sent: int, received: int, compute_s: float = 0.0) -> float:
        """Modelled duration of an exchange: wire time both ways plus device compute time."""
        return self.transfer_time(sent, received) + compute_s

    def timeout(self, sent: int, received: int, compute_s: float = 0.0) -> float:
        """Deadline for an exchange: the modelled duration with slack, plus the margin."""
        return self.expected(sent, received, compute_s) * self.slack + self.margin_s

    def idle_gap(self) -> float:
        """Silence that means a device has stopped talking: a generous number of character
        times, but never below the margin (a USB serial adapter delivers in ~ms bursts)."""
        return max(self.margin_s / 2, 200 * char_time(self.baud))
