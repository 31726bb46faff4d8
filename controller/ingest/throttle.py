"""Log throttling: a message rejected for one reason a thousand times a second is one
warning a second, which says how many it stood for."""

from __future__ import annotations

import time


class Throttle:
    """At most one log line per key per interval; the next one says how many were skipped."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._state: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> int | None:
        """The number of lines suppressed since the last one, or ``None`` to stay quiet."""
        now = time.monotonic()
        last, suppressed = self._state.get(key, (float("-inf"), 0))
        if now - last >= self.interval_s:
            self._state[key] = (now, 0)
            return suppressed
        self._state[key] = (last, suppressed + 1)
        return None
