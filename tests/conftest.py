"""Suite-wide set-up: the tests press Ctrl-C on the programs they start, as a user would."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background of a non-interactive shell (``nohup ... &``, a CI
    runner's job) inherits SIGINT ignored, and every program it starts would inherit that
    too: `farm sim`, `farm run` and the agent rightly keep ignoring it, as a background job
    should, and the tests that interrupt them would wait in vain. The suite takes SIGINT back,
    so its children start with the disposition of a foreground program."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
