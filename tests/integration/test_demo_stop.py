"""`farm demo` stops completely and in order: on SIGTERM in the middle of its sweep, and, once
left running with ``--keep``, with the ``farm demo --stop DIR`` it prints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

from controller.stopping import kill_tree
from tests.integration.farm_procs import alive, descendants, farm_command, wait_until
from tests.integration.test_demo import leftovers, start_demo


async def test_sigterm_mid_sweep_stops_every_process_without_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    process = await start_demo(out, "--embedded")
    try:
        # A performance run calibrating: the sweep is under way on a board.
        await wait_until(
            lambda: "event=calibrated" in _read(out / "agent.log"), 300, "a run under way"
        )
        started = descendants(process.pid)
        names = " ".join(_cmdline(pid) for pid in started)
        assert "valkey-server" in names and "controller worker" in names, names
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130
    assert "Traceback" not in stderr.decode()
    # The demo waited for its tiers before exiting: nothing is left at this moment.
    assert alive(started) == []
    assert leftovers(out) == []


async def test_keep_leaves_the_farm_running_until_demo_stop(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, _stdout, stderr = await farm_command(
        ["demo", "--quick", "--embedded", "--json", "--boards", "4", "--keep", "--out", str(out)],
        {},
        600,
    )
    try:
        assert code == 0, stderr[-3000:]
        assert f"farm demo --stop {out}" in stderr
        recorded = dict(json.loads((out / "pids.json").read_text()))
        assert {"worker", "valkey", "agent", "sim"} <= recorded.keys(), recorded
        running = [pid for top in recorded.values() for pid in [top, *descendants(top)]]
        assert sorted(alive(running)) == sorted(running)  # still running after the demo left
        code, _, stop_err = await farm_command(["demo", "--stop", str(out)], {}, 120)
        assert code == 0, stop_err
        assert alive(running) == []
        assert leftovers(out) == []
        assert not (out / "pids.json").exists()
        # A second stop has nothing to stop and says so.
        code, _, again = await farm_command(["demo", "--stop", str(out)], {}, 60)
        assert code == 2 and "pids.json" in again
    finally:
        # After a failure: whatever the demo left (valkey retitles itself: its command line
        # no longer names the folder, so go by the pids the demo recorded).
        recorded_file = out / "pids.json"
        if recorded_file.exists():
            for _name, pid in json.loads(recorded_file.read_text()):
                with contextlib.suppress(OSError):
                    if os.getsid(pid) == pid:
                        kill_tree(pid)
        for cmdline_pid in _pids_with(out):
            os.kill(cmdline_pid, signal.SIGKILL)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids_with(out: Path) -> list[int]:
    """Processes with the demo's folder on their command line (teardown after a failure)."""
    return [
        int(p.parent.name)
        for p in Path("/proc").glob("[0-9]*/cmdline")
        if str(out) in _cmdline(int(p.parent.name))
    ]
