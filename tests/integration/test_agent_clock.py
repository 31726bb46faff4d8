"""An agent's statuses are ordered by its start generation, kept in its journal, not by its
clock: a Pi without a real-time clock may start with its clock behind the previous start's.
The agent runs under libfaketime (a real clock offset for the whole process)."""

from __future__ import annotations

import json
from pathlib import Path

from controller import keys
from tests.integration.controller_lab import start_controller_lab
from tests.integration.farm_procs import agent_proc, wait_until

#: Debian's faketime package (.ci/run installs it), in the machine's multiarch directory.
FOUND = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
LIBFAKETIME = FOUND[0] if FOUND else Path("/usr/lib/<arch>/faketime/libfaketime.so.1")
INSTALLED = bool(FOUND)


async def test_an_agent_restarted_an_hour_behind_is_still_believed(tmp_path: Path) -> None:
    assert INSTALLED, f"{LIBFAKETIME} missing: apt-get install faketime"
    lab = await start_controller_lab(tmp_path)
    try:
        await lab.add_agent("pi-1", "- {id: kws-1, model: kws01}")
        await lab.start_controller(workers=0)
        await lab.boards_ready(["kws-1"])

        def status() -> dict:
            return json.loads(lab.redis.hget(keys.agent("pi-1"), "status") or "{}")

        first = status()["started"]
        await lab.agents["pi-1"].stop()
        await wait_until(lambda: status().get("state") == "offline", 30, "pi-1 said offline")

        behind = agent_proc(tmp_path / "sim-pi-1", tmp_path / "agent-pi-1-behind.log")
        behind.env = {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME": "-1h",
            # Only the wall clock is wrong on such a Pi; its event loop's clock is not.
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        lab.agents["pi-1"] = behind
        await behind.start()
        await wait_until(
            lambda: status().get("state") == "online", 60, f"pi-1 online again\n{lab.logs()}"
        )
        again = status()
        assert again["time"] < first - 3000, "the agent's clock is an hour behind"
        assert again["started"] > first
        await lab.boards_ready(["kws-1"])
        for reason in ("stale_agent_status", "stale_board_status"):
            assert lab.redis.hget(keys.INGEST_COUNTERS, f"rejected_{reason}") is None
    finally:
        await lab.stop()
