"""How tests judge that a client gave up on its own computed deadline.

Not a figure of merit: how close a client comes to its budget is measured in bench/. On a
loaded machine the event loop can run seconds late, so a test only tells "gave up by its own
timer" from "waited on a longer one" (a resync's 30 s cap, an outer guard, a hang)."""

from __future__ import annotations

#: How much later than its budget a wait may end and still count as ended by its own timer.
LATE_S = 5.0


def assert_on_time(took: float, timeout: float) -> None:
    """``took`` seconds ended a wait whose computed budget was ``timeout``."""
    assert took <= timeout + LATE_S, f"waited {took:.2f} s on a {timeout:.2f} s budget"
