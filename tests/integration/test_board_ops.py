"""`farm board ...` against live agents driving `farm sim` boards, every part real (Mosquitto,
Redis, ingest, RQ worker processes, agents, simulators): each operation from the command line
with the agent's result and exit status, each operation in the board's history as `farm
status` shows it, the wait for a check bounded by the wire-time model at the board's bauds,
reservations (sweeps skip them, a restart of ingest and the workers keeps them, they expire
on time, a vanished console's holder loses it), scheduled health checks that quarantine a
board gone bad, and the console's round trip to a simulated DUT. Times are judged against
their computed budgets with tests/integration/deadlines.py's allowance."""

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
from controller.board_ops import bound_s
from controller.reaper import INTERVAL_S as REAPER_INTERVAL_S
from controller.reservations import clock
from farm.protocol.dut_firmware import PROFILE
from tests.integration.controller_lab import ControllerLab
from tests.integration.deadlines import assert_on_time
from tests.integration.farm_procs import Proc, farm_command, fetch, free_port, wait_until

#: Two boards of one agent: ``sick`` answers its start-up check (two ``name`` commands: the
#: resync's and the check's own), then hangs on the next ``name`` until power-cycled.
SICK = """\
- {id: ic-1, model: ic01, latency: {median_s: 0.004, spread: 0}}
- id: sick
  model: kws01
  latency: {median_s: 0.002, spread: 0}
  faults: [{kind: hang, command: name, after: 2, count: 1}]
"""
#: Two healthy boards.
HEALTHY = """\
- {id: ic-1, model: ic01, latency: {median_s: 0.004, spread: 0}}
- {id: kws-2, model: kws01, latency: {median_s: 0.002, spread: 0}}
"""
#: A fast board (ad01's reference 921600 baud) and a slow one (its DUT configured at 9600)
#: whose DUT hangs at its next check, after its start-up check's two ``name`` commands.
BAUDS = """\
- {id: fast, model: ad01, latency: {median_s: 0.002, spread: 0}}
- id: slow
  model: kws01
  baud: 9600
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


async def start(
    lab: ControllerLab,
    boards: str,
    *,
    workers: int = 1,
    ready: list[str] | None = None,
    **env: str,
) -> None:
    """One agent with ``boards``, ingest and ``workers`` RQ workers, run by :data:`USER`;
    waits for ``ready`` (default: ic-1 and the other board of :data:`SICK` or
    :data:`HEALTHY`) to be idle and healthy."""
    lab.extra_env.update({"FARM_USER": USER, **env})
    await lab.add_agent("pi-a", boards)
    await lab.start_controller(workers=workers)
    await lab.boards_ready(ready or ["ic-1", "sick" if "sick" in boards else "kws-2"])


def board_state(lab: ControllerLab, board: str) -> dict[str, Any]:
    """The board's last status as ingest stored it."""
    return json.loads(lab.redis.hget(keys.board(board), "status"))


async def test_operations_from_the_cli_answer_with_the_agents_result(lab: ControllerLab) -> None:
    await start(lab, SICK)
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
    assert "flash ic-1: ok" in out and "model: kws01" in out, out
    status = board_state(lab, "ic-1")
    assert (status["model"], status["build"]) == ("kws01", "performance")
    # An image the board does not have: the agent's reason, exit 1.
    code, out, errs = await lab.farm(
        "board", "flash", "ic-1", "--model", "ic01", "--build", "energy", check=False
    )
    assert code == 1, errs
    assert "failed: BoardUnavailable: board ic-1 has no energy image for ic01" in errs, errs
    # Back to its own firmware (the board's model is the default with --model).
    await lab.farm("board", "flash", "ic-1", "--model", "ic01")

    # The sick board hangs on its next check: exit 1 with the agent's reason, health bad.
    code, _, errs = await lab.farm("board", "health-check", "sick", check=False)
    assert code == 1 and "health-check sick: failed: health check failed" in errs, errs
    assert "did not answer" in errs
    status = board_state(lab, "sick")
    assert status["health"] == "bad"
    # A power cycle brings it back (the hang lasts until the power goes).
    _, out, _ = await lab.farm("board", "power-cycle", "sick")
    assert "power-cycle sick: ok" in out and "(power: command " in out, out
    status = board_state(lab, "sick")
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


async def test_a_reservation_takes_the_board_out_of_scheduling_and_ends_on_time(
    lab: ControllerLab,
) -> None:
    await start(lab, HEALTHY)
    code, _, errs = await lab.farm("board", "reserve", "ic-1", "--for", "2x", check=False)
    assert code == 2 and "expected a duration" in errs, errs
    for span in ("0", "8d"):
        code, _, errs = await lab.farm("board", "reserve", "ic-1", "--for", span, check=False)
        assert code == 2 and "up to 7 days" in errs, errs
    code, _, errs = await lab.farm("board", "reserve", "ic-9", "--for", "1h", check=False)
    assert code == 2 and "did you mean 'ic-1'" in errs, errs

    before = time.time()
    _, out, _ = await lab.farm(
        "board", "reserve", "ic-1", "--for", "1h", "--note", "uart debugging", "--json"
    )
    held = json.loads(out)
    assert (held["holder"], held["note"], held["busy"]) == (USER, "uart debugging", None)
    assert before + 3600 <= held["until"] <= time.time() + 3600
    # Someone else can neither take it nor operate it; its holder can.
    code, _, errs = await farm_as(lab, "bob", "board", "reserve", "ic-1", "--for", "5m")
    assert code == 1 and f"board ic-1 is reserved by {USER} until" in errs, errs
    code, _, errs = await farm_as(lab, "bob", "board", "health-check", "ic-1")
    assert code == 1 and f"reserved by {USER} until" in errs and "--force" in errs, errs
    await lab.farm("board", "health-check", "ic-1")
    _, out, _ = await lab.farm("status", "--format", "csv")
    assert f"{USER} until {time.strftime('%H:%M', time.localtime(held['until']))}" in out, out

    # A sweep skips it with the reason and runs the other board.
    _, out, _ = await lab.farm(
        "submit", "--benchmark", "kws,ic", "--mode", "accuracy", "--limit", "3", "--boards",
        "all", "--wait", "--json",
    )  # fmt: skip
    sweep = json.loads(out.splitlines()[0])
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held["until"]))
    reason = f"reserved by {USER} until {until} (uart debugging)"
    assert sorted((s["board"], s["benchmark"], s["reason"]) for s in sweep["skipped"]) == [
        ("ic-1", "ic01", reason),
        ("ic-1", "kws01", reason),
    ]
    assert len(sweep["runs"]) == 2  # kws-2: kws01, and ic01 after a flash
    _, out, _ = await lab.farm("show", sweep["sweep"], "--json")
    assert {(r["board"], r["state"]) for r in json.loads(out)["runs"]} == {("kws-2", "completed")}

    # Only its holder releases it (or anyone with --force).
    code, _, errs = await farm_as(lab, "bob", "board", "release", "ic-1")
    assert code == 1 and "--force" in errs, errs
    _, out, _ = await lab.farm("board", "release", "ic-1")
    assert f"reservation by {USER} ended" in out, out
    _, out, _ = await lab.farm("board", "release", "ic-1")
    assert "nothing to release" in out, out

    # Its history, as farm status shows it: the reservation, the holder's check, its end.
    _, out, _ = await lab.farm("status", "--board", "ic-1", "--json")
    shown = [(e["op"], e["who"], e["result"], e["reason"]) for e in json.loads(out)["history"]]
    assert shown == [
        ("unreserve", USER, "ok", "released"),
        ("health-check", USER, "ok", None),
        ("reserve", USER, "ok", None),
    ]

    # A reservation survives the restart of every controller process that keeps state
    # (ingest, the workers and their reaper), and the restarted reaper ends it on time. A run
    # queued before it (while the workers are stopped: a sweep skips a reserved board) fails
    # with the reservation as its reason when its turn comes.
    for proc in lab.workers:
        await proc.stop()
    lab.workers.clear()
    _, out, _ = await lab.farm(
        "submit", "--benchmark", "kws", "--mode", "accuracy", "--limit", "3", "--boards",
        "kws-2", "--json",
    )  # fmt: skip
    queued = json.loads(out.splitlines()[0])["runs"][0]
    _, out, _ = await lab.farm("board", "reserve", "kws-2", "--for", "40s", "--json")
    held = json.loads(out)
    reserved_at, until = held["since"], held["until"]
    assert lab.ingest is not None
    await lab.ingest.stop()
    assert lab.redis.hget(keys.board_reservation("kws-2"), "until") == repr(until)
    await lab.start_controller(workers=1)
    await wait_until(
        lambda: lab.redis.hget(keys.run(queued), "state") == "failed", 60, "the queued run fails"
    )
    reason = lab.redis.hget(keys.run(queued), "reason")
    assert reason.startswith(f"board kws-2 takes no runs: reserved by {USER} until"), reason
    assert time.time() < until, "the restart took the whole reservation: nothing was shown"
    # Still there, unchanged, after the restart: in farm status with its end.
    _, out, _ = await lab.farm("status", "--board", "kws-2", "--json")
    kept = ("holder", "since", "until", "note", "console")
    assert json.loads(out)["reservation"] == {k: held[k] for k in kept}
    _, out, _ = await lab.farm("status", "--format", "csv")
    assert f"{USER} until {time.strftime('%H:%M', time.localtime(until))}" in out, out
    ended = await wait_until(
        lambda: [e for e in history(lab, "kws-2") if e["op"] == "unreserve"],
        until - time.time() + 60,
        "its expiry",
    )
    assert (ended[0]["who"], ended[0]["result"]) == ("controller", "ok")
    assert ended[0]["reason"] == f"expired at {clock(until)}"
    # On time: never before its end, and by the restarted reaper's first tick after it.
    assert ended[0]["time"] >= until
    assert_on_time(ended[0]["time"] - reserved_at, until - reserved_at + REAPER_INTERVAL_S)
    assert not lab.redis.exists(keys.board_reservation("kws-2"))
    _, out, _ = await lab.farm("status", "--board", "kws-2", "--json")
    detail = json.loads(out)
    assert detail["reservation"] is None
    assert [(e["op"], e["who"]) for e in detail["history"][:2]] == [
        ("unreserve", "controller"),
        ("reserve", USER),
    ]


async def test_a_scheduled_check_quarantines_a_board_gone_bad(lab: ControllerLab) -> None:
    # Every board idle and unchecked for 4 s is checked by the controller.
    await start(lab, SICK, workers=2, FARM_HEALTH_INTERVAL_S="4")
    await wait_until(
        lambda: lab.redis.exists(keys.board_quarantine("sick")), 90, "sick quarantined"
    )
    quarantined = lab.redis.hgetall(keys.board_quarantine("sick"))
    assert quarantined["by"] == "controller"
    assert quarantined["reason"].startswith("failed a scheduled health check (unchecked for ")
    assert "the DUT did not answer" in quarantined["reason"]
    ops = [(e["op"], e["who"], e["result"]) for e in history(lab, "sick")]
    assert ops[:2] == [("quarantine", "controller", "ok"), ("health-check", "controller", "failed")]
    # The healthy board passed its scheduled checks and is not quarantined.
    await wait_until(
        lambda: (
            ("health-check", "controller", "ok")
            in [(e["op"], e["who"], e["result"]) for e in history(lab, "ic-1")]
        ),
        60,
        "a scheduled check of ic-1",
    )
    assert not lab.redis.exists(keys.board_quarantine("ic-1"))
    # The agent marked it bad: what FarmBoardHealthBad fires on, with the reason.
    assert board_state(lab, "sick")["health"] == "bad"
    port = free_port()
    exporter = Proc(
        ["controller", "exporter", "--port", str(port)], lab.dir / "exporter.log", env=lab.env
    )
    await exporter.start()
    try:
        metrics = await wait_until(lambda: _scrape(port), 30, "the exporter")
    finally:
        await exporter.stop()
    assert 'farm_board_health{agent="pi-a",board="sick",state="bad"} 1.0' in metrics
    # And FarmBoardQuarantined on this, for as long as the quarantine lasts, with its reason;
    # the scheduled checks counted by outcome.
    assert 'farm_board_quarantined{agent="pi-a",board="sick"} 1.0' in metrics
    assert 'farm_board_quarantined{agent="pi-a",board="ic-1"} 0.0' in metrics
    assert (
        'farm_board_quarantine_reason_info{agent="pi-a",board="sick",reason="failed a '
        "scheduled health check (unchecked for "
    ) in metrics
    assert 'farm_scheduled_health_checks_total{board="sick",state="failed"} 1.0' in metrics
    assert 'farm_scheduled_health_checks_total{board="ic-1",state="passed"}' in metrics
    # farm status shows the quarantine and the controller's operations.
    _, out, _ = await lab.farm("status", "--board", "sick", "--json")
    detail = json.loads(out)
    assert detail["quarantine"]["reason"] == quarantined["reason"]
    assert [(e["op"], e["who"]) for e in detail["history"][:2]] == [
        ("quarantine", "controller"),
        ("health-check", "controller"),
    ]

    # Sweeps skip it with the reason.
    _, out, _ = await lab.farm(
        "submit", "--benchmark", "ic", "--mode", "accuracy", "--limit", "3", "--json"
    )
    sweep = json.loads(out.splitlines()[0])
    assert [(s["board"], s["reason"]) for s in sweep["skipped"]] == [
        ("sick", f"quarantined: {quarantined['reason']} (farm board release sick)")
    ]
    # Released only once a check passes: the DUT still hangs, so it stays out.
    code, out, errs = await lab.farm("board", "release", "sick", check=False)
    assert code == 1 and "sick stays out of service: the check failed" in errs, out + errs
    assert lab.redis.exists(keys.board_quarantine("sick"))
    _, out, errs = await lab.farm("board", "power-cycle", "sick", "--wait", "60")
    assert "power-cycle sick: ok" in out and "still quarantined" in errs, out + errs
    _, out, _ = await lab.farm("board", "release", "sick", "--json")
    released = json.loads(out)
    assert released["back_in_service"] and released["check"]["ok"], released
    assert not lab.redis.exists(keys.board_quarantine("sick"))
    _, out, _ = await lab.farm("status", "--board", "sick", "--json")
    detail = json.loads(out)
    assert detail["quarantine"] is None
    assert [(e["op"], e["who"], e["result"]) for e in detail["history"][:5]] == [
        ("release", USER, "ok"),
        ("health-check", USER, "ok"),  # release's check
        ("power-cycle", USER, "ok"),
        ("health-check", USER, "failed"),  # the first release's check
        ("quarantine", "controller", "ok"),
    ]


async def test_a_checks_bound_comes_from_the_boards_bauds_and_ends_it(
    lab: ControllerLab,
) -> None:
    await start(lab, BAUDS, ready=["fast", "slow"])
    # The agents list the bauds their checks try: the slow board's own rate first.
    assert board_state(lab, "slow")["bauds"] == [9600, 115200, 921600]
    assert board_state(lab, "fast")["bauds"] == [921600, 115200]
    _, out, _ = await lab.farm("board", "health-check", "fast", "--json")
    fast = json.loads(out)
    assert fast["ok"] and fast["bound_s"] == pytest.approx(
        bound_s("health-check", board_state(lab, "fast")), abs=1e-3
    )

    # The slow board's DUT never answers: its check tries every baud and fails, within its
    # bound (longer than the fast board's: it has a slower baud to try), exit 1.
    code, out, errs = await lab.farm("board", "health-check", "slow", "--json", check=False)
    slow = json.loads(out)
    assert code == 1 and (slow["ok"], slow["outcome"]) == (False, "failed"), slow
    assert "the DUT did not answer" in slow["reason"] and "9600 baud" in slow["reason"], slow
    assert slow["bound_s"] > fast["bound_s"]
    assert_on_time(slow["seconds"], slow["bound_s"])

    # An agent that never answers (stopped): the controller gives up at the bound itself,
    # exit 1 saying so.
    agent = lab.agents["pi-a"].process
    assert agent is not None
    agent.send_signal(signal.SIGSTOP)
    try:
        code, out, errs = await lab.farm("board", "health-check", "fast", "--json", check=False)
    finally:
        agent.send_signal(signal.SIGCONT)
    stopped = json.loads(out)
    assert code == 1 and stopped["outcome"] == "timeout", stopped
    assert stopped["bound_s"] == fast["bound_s"]
    assert stopped["reason"] == (
        f"no result from agent pi-a within {fast['bound_s']:.0f} s (it may still be at it)"
    )
    assert stopped["seconds"] >= stopped["bound_s"]
    assert_on_time(stopped["seconds"], stopped["bound_s"])
    entry = history(lab, "fast")[0]
    assert (entry["op"], entry["result"], entry["reason"]) == (
        "health-check",
        "failed",
        stopped["reason"],
    )
    # Without --json: one line saying so on stderr, exit 1 (the agent is back: it answers).
    code, _, errs = await lab.farm("board", "health-check", "slow", check=False)
    assert code == 1 and errs.startswith("health-check slow: failed: health check failed"), errs


def _scrape(port: int) -> str | None:
    try:
        return fetch(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None


async def console(
    lab: ControllerLab, board: str, stdin: bytes | None
) -> tuple[int, str, str] | asyncio.subprocess.Process:
    """``farm board console BOARD`` fed ``stdin`` (its status and output); with None, the
    process itself, its stdin left open."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "farm.cli", "board", "console", board,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **lab.env},
    )  # fmt: skip
    if stdin is None:
        return process
    out, errs = await asyncio.wait_for(process.communicate(stdin), 120)
    return process.returncode or 0, out.decode(), errs.decode()


async def test_console_talks_to_the_dut_while_reserved(lab: ControllerLab) -> None:
    await start(lab, HEALTHY, FARM_CONSOLE_GRACE_S="3")
    code, _, errs = await console(lab, "kws-2", b"name\n")  # type: ignore[misc]
    assert code == 1 and "board kws-2 is not reserved by you" in errs, errs

    await lab.farm("board", "reserve", "kws-2", "--for", "1h")
    code, out, errs = await console(lab, "kws-2", b"name\nprofile\n")  # type: ignore[misc]
    assert code == 0, errs
    assert out.splitlines() == [
        "m-name-dut-[unspecified]",
        "m-ready",
        f"m-profile-[{PROFILE}]",
        "m-model-[kws01]",
        "m-ready",
    ], out
    assert "console closed: closed by the holder" in errs, errs
    entry = history(lab, "kws-2")[0]
    assert (entry["op"], entry["result"], entry["reason"]) == (
        "console",
        "ok",
        "closed by the holder",
    )
    assert (entry["detail"]["lines_sent"], entry["detail"]["lines_received"]) == (2, 5)
    # After the session the agent checked the board: idle and healthy, still reserved.
    await lab.boards_ready(["kws-2"])
    assert lab.redis.exists(keys.board_reservation("kws-2"))

    # The holder's console vanishes (SIGKILL): the controller ends the reservation within
    # the grace, and the agent closes the idle session.
    process = await console(lab, "kws-2", None)
    assert isinstance(process, asyncio.subprocess.Process) and process.stderr is not None
    line = await asyncio.wait_for(process.stderr.readline(), 60)
    assert b"console on kws-2" in line, line
    assert process.stdin is not None
    process.stdin.write(b"name\n")
    await process.stdin.drain()
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 30) == b"m-name-dut-[unspecified]\n"
    killed = time.time()
    process.send_signal(signal.SIGKILL)
    await process.wait()
    ended = await wait_until(
        lambda: [e for e in history(lab, "kws-2") if e["op"] == "unreserve"], 30, "its end"
    )
    assert ended[0]["who"] == "controller" and "console" in ended[0]["reason"]
    assert ended[0]["reason"].endswith(") disappeared"), ended[0]["reason"]
    # Within the grace and one reaper tick of its last sign of life (before the kill).
    assert_on_time(ended[0]["time"] - killed, 3 + REAPER_INTERVAL_S)
    # The reservation, the closed session and the reservation's end, as farm status shows
    # them (the killed console could record nothing).
    _, out, _ = await lab.farm("status", "--board", "kws-2", "--json")
    shown = [(e["op"], e["who"]) for e in json.loads(out)["history"]]
    assert shown == [("unreserve", "controller"), ("console", USER), ("reserve", USER)], shown
    await lab.boards_ready(["kws-2"], within=30)
    await lab.farm("board", "health-check", "kws-2")
