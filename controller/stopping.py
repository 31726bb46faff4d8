"""Stopping a set of farm processes in dependency order, bounded in time.

Used by ``farm demo`` (its own children, and ``farm demo --stop DIR`` for a demo left running
with ``--keep``). Processes stop in tiers: the controller's and the agent's processes first
(they flush to Redis and the broker), then the simulated boards, then the services they all
talk to. Each tier gets SIGTERM at once and a deadline; whatever is left of it then (the
process, its group, and its children's groups: the worker pool gives each worker its own) is
killed, so a stop ends within the sum of the tier deadlines whatever the load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from farm.logs import get_logger

log = get_logger("controller.stopping")

#: Process names (as the demo names them) by tier, first to stop first; unnamed ones go last.
TIERS: tuple[frozenset[str], ...] = (
    frozenset({"worker", "exporter", "ingest", "agent"}),
    frozenset({"sim"}),
)
#: Seconds each tier gets after SIGTERM. The worker pool hands a running run back after 3 s
#: and kills its workers after 8 s, so the first tier's 9 s covers that; the total (9 + 3 +
#: 3 s) stays under the demo's promise of 15 s.
TIER_DEADLINES_S = (9.0, 3.0, 3.0)
POLL_S = 0.05


def tier_of(name: str) -> int:
    """The tier a process of this name stops in."""
    return next((i for i, names in enumerate(TIERS) if name in names), len(TIERS))


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux ``/proc/PID/task/*/children``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (reaping it if it is our child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group, and every process below it with their groups."""
    for child in children(pid):
        kill_tree(child)
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(target, signal.SIGKILL)


def stop_in_order(procs: Iterable[tuple[str, int]]) -> list[str]:
    """Stop ``(name, pid)`` processes tier by tier; the names of those that had to be killed."""
    tiers: dict[int, list[tuple[str, int]]] = {}
    for name, pid in procs:
        tiers.setdefault(tier_of(name), []).append((name, pid))
    killed: list[str] = []
    for tier in sorted(tiers):
        members = [(n, p) for n, p in tiers[tier] if not gone(p)]
        for _name, pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + TIER_DEADLINES_S[min(tier, len(TIER_DEADLINES_S) - 1)]
        while members and time.monotonic() < deadline:
            members = [(n, p) for n, p in members if not gone(p)]
            time.sleep(POLL_S)
        for name, pid in members:
            log.warning("process_killed", name=name, pid=pid)
            killed.append(name)
            kill_tree(pid)
        for _name, pid in tiers[tier]:
            # Whatever a process left in its own group (it was started as a session leader).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    return killed
