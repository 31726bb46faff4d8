"""What the farm benchmarks share: running a script's async main so that Ctrl-C or SIGTERM
cancels it (its ``finally`` blocks stop every process it started) and it exits 130; a
process's memory from /proc; the load average they report beside their figures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
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


def mem_kib(pid: int) -> dict[str, int]:
    """RSS, PSS and USS of a process in KiB (``/proc/PID/smaps_rollup``); zeros if it is gone."""
    values = {"rss": 0, "pss": 0, "uss": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == "Rss":
                values["rss"] = int(rest.split()[0])
            elif name == "Pss":
                values["pss"] = int(rest.split()[0])
            elif name in ("Private_Clean", "Private_Dirty"):
                values["uss"] += int(rest.split()[0])
    return values


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, ``1.00/0.50/0.25``."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"
