"""The serial endpoint a simulated device talks through.

Two implementations share this interface: a pty whose other end the host opens like a real
USB serial port (``farm.sim.pty_port``), and an in-process wire between two simulated devices,
such as the interface board's DUT-side UART and the DUT (``farm.sim.wire_pair``). Both pace
bytes at the configured baud, because a pty or a queue delivers instantly and the host must
see real wire times.
"""

from __future__ import annotations

from typing import Protocol


class Uart(Protocol):
    """A device's UART: paced output, input delivered at its wire time, an overrun model."""

    baud: int

    async def write(self, data: bytes) -> None:
        """Send ``data`` at the line rate; return once the last byte has left the wire
        (blocking-printf semantics: the device is busy while it prints)."""
        ...

    async def read(self) -> bytes:
        """Wait for received bytes; each byte is delivered only once its wire time has passed
        (arrival at the sender's write time, plus 10/baud s per byte on the line)."""
        ...

    def drop_received_between(self, start: float, end: float, keep: int) -> int:
        """Model an RX overrun while the device was not reading: of the bytes whose wire
        arrival lies in ``[start, end)`` (event-loop clock), keep the first ``keep`` and drop
        the rest. Returns how many were dropped."""
        ...

    def clear_input(self) -> int:
        """Drop every byte received and not yet read (a reset); return how many."""
        ...
