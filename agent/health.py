"""Board health, kept apart from board state as LAVA does.

State says what a board is doing (idle, busy, flashing, offline); health says whether it can
be trusted with a run: ``good`` after a passing check, ``unknown`` after an infrastructure
failure (a check must pass before the next run, and every run starts with one), ``bad`` after
``max_failures`` failures in a row or a failed explicit health check, until a health check
passes. A bad board is refused runs, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.messages import Health


@dataclass
class BoardHealth:
    """One board's health and why."""

    max_failures: int = 3
    health: Health = "unknown"
    reason: str | None = "not checked yet"
    failures: int = 0
    """Failures in a row since the last pass."""

    def passed(self) -> None:
        """A health check (or a run) succeeded."""
        self.health, self.reason, self.failures = "good", None, 0

    def failed(self, reason: str) -> None:
        """An infrastructure or device failure: unknown, or bad once they repeat."""
        self.failures += 1
        self.reason = reason
        self.health = "bad" if self.failures >= self.max_failures else "unknown"

    def check_failed(self, reason: str) -> None:
        """An explicit health check failed: the board is bad until one passes."""
        self.failures += 1
        self.health, self.reason = "bad", reason

    @property
    def refuses_runs(self) -> bool:
        """Whether runs are refused (until a health check passes)."""
        return self.health == "bad"
