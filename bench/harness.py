"""What the farm benchmarks share: running a script's async main so that Ctrl-C or SIGTERM
cancels it (its ``finally`` blocks stop every process it started) and it exits 130."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any


def run_bench(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, cancelled by SIGTERM as by Ctrl-C; the exit status."""

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
