"""`farm board ...` against live agents driving `farm sim` boards, every part real (Mosquitto,
Redis, ingest, RQ worker processes, agents, simulators): each operation from the command line
with the agent's result and exit status, reservations (sweeps skip them, a restart keeps them,
they expire on time, a vanished console's holder loses it), scheduled health checks that
quarantine a board gone bad, and the console's round trip to a simulated DUT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import pytest

from controller import keys
from farm.sim.dut import SimDut
from tests.integration.controller_lab import ControllerLab
from tests.integration.farm_procs import farm_command, wait_until

#: Two boards of one agent: ``sick`` answers its start-up check (two ``name`` commands: the
#: resync's and the check's own), then hangs on the next ``name`` until power-cycled.
BOARDS = """\
- {id: ic-1, model: ic01, latency: {median_s: 0.004, spread: 0}}
- id: sick
  model: kws01
  latency: {median_s: 0.002, spread: 0}
  faults: [{kind: hang, command: name, after: 2, count: 1}]
"""
USER = "alice"


async def farm_as(lab: ControllerLab, user: str, *args: str) -> tuple[int, str, str]:
    """``farm ARGS`` run by ``user`` (FARM_USER)."""
    return await farm_command(args, {**lab.env, "FARM_USER": user}, 600)


def history(lab: ControllerLab, board: str) -> list[dict[str, Any]]:
    """The board's operations, newest first, as stored."""
    return [json.loads(raw) for raw in lab.redis.lrange(keys.board_ops(board), 0, -1)]


async def start(lab: ControllerLab, workers: int = 1, **env: str) -> None:
    lab.extra_env.update({"FARM_USER": USER, **env})
    await lab.add_agent("pi-a", BOARDS)
    await lab.start_controller(workers=workers)
    await lab.boards_ready(["ic-1", "sick"])


async def test_operations_from_the_cli_answer_with_the_agents_result(lab: ControllerLab) -> None:
    await start(lab)
    # Unknown board: bad input, the known ones and the closest match named.
    code, _, errs = await lab.farm("board", "health-check", "ic-2", check=False)
    assert code == 2 and "known: ic-1, sick" in errs and "did you mean 'ic-1'" in errs, errs
    code, _, errs = await lab.farm("board", "flash", "ic-1", "--model", "ic9", check=False)
    assert code == 2 and "unknown model 'ic9'" in errs, errs

    _, out, _ = await lab.farm("board", "health-check", "ic-1", "--json")
    check = json.loads(out)
    assert check["ok"] and check["outcome"] == "done"
    assert (check["detail"]["model"], check["detail"]["build"]) == ("ic01", "performance")

    # Flash another model: the agent flashes it through the simulator and checks it.
    code, out, errs = await lab.farm("board", "flash", "ic-1", "--model", "kws01")
    assert "flash ic-1: ok" in out and "model kws01" in out, out
    status = json.loads(lab.redis.hget(keys.board("ic-1"), "status"))
    assert (status["model"], status["build"]) == ("kws01", "performance")
    # An image the board does not have: the agent's reason, exit 1.
    code, out, errs = await lab.farm(
        "board", "flash", "ic-1", "--model", "ic01", "--build", "energy", check=False
    )
    assert code == 1 and "failed: BoardUnavailable: board ic-1 has no energy image for ic01" in errs, errs
    # Back to its own firmware (the board's model is the default with --model).
    await lab.farm("board", "flash", "ic-1", "--model", "ic01")

    # The sick board hangs on its next check: exit 1 with the agent's reason, health bad.
    code, _, errs = await lab.farm("board", "health-check", "sick", check=False)
    assert code == 1 and "health-check sick: failed: health check failed" in errs, errs
    assert "did not answer" in errs
    status = json.loads(lab.redis.hget(keys.board("sick"), "status"))
    assert status["health"] == "bad"
    # A power cycle brings it back (the hang lasts until the power goes).
    _, out, _ = await lab.farm("board", "power-cycle", "sick")
    assert "power-cycle sick: ok" in out and "how command" in out, out
    status = json.loads(lab.redis.hget(keys.board("sick"), "status"))
    assert (status["health"], status["state"]) == ("good", "idle")

    # Every operation is in the board's history, newest first, with who and the result.
    ops = [(e["op"], e["who"], e["result"]) for e in history(lab, "ic-1")]
    assert ops == [
        ("flash", USER, "ok"),
        ("flash", USER, "failed"),
        ("flash", USER, "ok"),
        ("health-check", USER, "ok"),
    ]
    assert history(lab, "ic-1")[1]["reason"] == (
        "BoardUnavailable: board ic-1 has no energy image for ic01"
    )
    _, out, _ = await lab.farm("status", "--board", "sick")
    assert "power-cycle" in out and "health check failed: board sick" in out, out
    _, out, _ = await lab.farm("status", "--board", "sick", "--json")
    detail = json.loads(out)
    assert [e["op"] for e in detail["history"]] == ["power-cycle", "health-check"]
    assert "the DUT did not answer" in detail["history"][1]["reason"]
    assert detail["status"]["health"] == "good" and detail["reservation"] is None
    _, out, _ = await lab.farm("status", "--format", "csv")
    assert f"power-cycle ok by {USER} " in out, out
