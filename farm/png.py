"""A tiny PNG line plot for the energy windows (``energy_inf_NNN.png``).

The official runner draws these with matplotlib; tinyfarm draws the same trace (power per
1 ms sample, the two window events marked) with zlib alone, so neither an agent nor a
controller needs a plotting stack for a picture nobody parses.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

WIDTH, HEIGHT, MARGIN = 800, 300, 10
_WHITE, _TRACE, _MARK, _AXIS = (255, 255, 255), (31, 119, 180), (214, 39, 40), (160, 160, 160)


def line_plot(path: Path, values: Sequence[float], marks: Sequence[int] = ()) -> None:
    """Write a PNG of ``values`` (one per x step) with vertical lines at the ``marks``
    indices. NaN values are left out of the trace."""
    pixels = [[_WHITE] * WIDTH for _ in range(HEIGHT)]
    finite = [v for v in values if not math.isnan(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = (hi - lo) or 1.0
    inner_w, inner_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def y_of(v: float) -> int:
        return MARGIN + inner_h - 1 - round((v - lo) / span * (inner_h - 1))

    for x in range(MARGIN, WIDTH - MARGIN):
        pixels[HEIGHT - MARGIN][x] = _AXIS
    n = len(values)
    if n:
        # Each column shows the min..max of the samples it covers, so no spike is lost.
        for col in range(inner_w):
            first = col * n // inner_w
            last = max((col + 1) * n // inner_w, first + 1)
            chunk = [v for v in values[first:last] if not math.isnan(v)]
            if not chunk:
                continue
            top, bottom = y_of(max(chunk)), y_of(min(chunk))
            for y in range(top, bottom + 1):
                pixels[y][MARGIN + col] = _TRACE
        for mark in marks:
            x = MARGIN + min(inner_w - 1, max(0, mark * inner_w // n))
            for y in range(MARGIN, HEIGHT - MARGIN):
                pixels[y][x] = _MARK
    path.write_bytes(_encode(pixels))


def _encode(pixels: list[list[tuple[int, int, int]]]) -> bytes:
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", len(pixels[0]), len(pixels), 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
