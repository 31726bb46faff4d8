"""`farm agent` end to end: a real Mosquitto of the test's own, `farm sim` boards on ptys, the
real agent process, and an observer subscribed the way the controller's ingest will be."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from farm.datasets import load_dataset
from farm.messages import RUN_EVENTS, SampleBatch, sample_digest
from tests.integration.farm_procs import AGENT, FAST, Lab, send, start_lab, stop_lab, wait_until

#: One fast kws01 board.
KWS_A = f"- {{id: kws-a, model: kws01, latency: {json.dumps(FAST)}}}\n"


@pytest.fixture
async def two_boards(tmp_path: Path) -> AsyncIterator[Lab]:
    """Two fast performance boards on one agent."""
    lab = await start_lab(
        tmp_path,
        f"""\
        - {{id: kws-a, model: kws01, latency: {json.dumps(FAST)}}}
        - {{id: ic-b, model: ic01, latency: {json.dumps(FAST)}}}
        """,
    )
    yield lab
    await stop_lab(lab)


async def long_latency_run(
    lab: Lab, run: str, *, min_queries: int, min_duration_s: float, flowing: int = 30
) -> None:
    """Start a latency run on kws-a once it is idle; return once its samples flow."""
    await lab.idle("kws-a")
    await lab.run(
        run,
        "kws-a",
        "kws01",
        "latency",
        options={"min_queries": min_queries, "min_duration_s": min_duration_s},
    )
    await wait_until(lambda: len(lab.observer.samples[run]) > flowing, 20, "samples flowing")


def assert_complete(lab: Lab, run: str, total: int) -> dict:
    """Every seq 0..total-1 arrived, each with one value; ``done`` counts and digests them."""
    done = lab.observer.event(run, "done")
    assert done is not None, lab.observer.events[run]
    unique = lab.observer.unique_samples(run)
    assert sorted(unique) == list(range(total))
    assert done["count"] == total
    assert done["digest"] == sample_digest(unique.values())
    return done


async def test_runs_stream_every_sample_once_with_a_matching_digest(two_boards: Lab) -> None:
    lab = two_boards
    # Both boards health-checked at start: their firmware is in the retained status.
    kws = await lab.idle("kws-a")
    assert (kws["model"], kws["build"], kws["health"]) == ("kws01", "performance", "good")
    assert (await lab.idle("ic-b"))["model"] == "ic01"

    command = await lab.run("r-acc", "kws-a", "kws01", "accuracy")
    await lab.run(
        "r-lat", "ic-b", "ic01", "latency", options={"min_queries": 60, "min_duration_s": 1.5}
    )
    acc = await lab.finished("r-acc")
    lat = await lab.finished("r-lat")
    assert acc["event"] == "done" and lat["event"] == "done", (acc, lat)

    assert lab.observer.ack(command, "accepted")["board"] == "kws-a"
    assert_complete(lab, "r-acc", 20)
    # Latency: at least the minimum query count, each with a DUT-timed latency.
    lat_samples = lab.observer.unique_samples("r-lat")
    assert_complete(lab, "r-lat", len(lat_samples))
    assert len(lat_samples) >= 60
    assert all(s["latency_us"] > 0 for s in lat_samples.values())
    # In a normal run nothing arrives twice.
    assert all(len(r) == 1 for r in lab.observer.samples["r-acc"].values())
    # A command without an attempt number gets events without one (as an older ingest reads).
    assert all("attempt" not in e for e in lab.observer.events["r-acc"])
    assert lab.observer.batch_attempts["r-acc"] == {None}

    # Every message validates against the shared schemas, in order: accepted, started, ...
    for run in ("r-acc", "r-lat"):
        kinds = [RUN_EVENTS.validate_python(e).event for e in lab.observer.events[run]]
        assert kinds[0] == "accepted" and kinds[1] == "started" and kinds[-1] == "done", kinds
        assert "progress" in kinds

    # The two boards ran at the same time: each started before the other finished.
    times = {r: {e["event"]: e["time"] for e in lab.observer.events[r]} for r in ("r-acc", "r-lat")}
    assert times["r-acc"]["started"] < times["r-lat"]["done"]
    assert times["r-lat"]["started"] < times["r-acc"]["done"]
    assert (await lab.idle("kws-a")).get("run") is None


async def test_samples_come_in_batches_within_the_delay(two_boards: Lab) -> None:
    lab = two_boards
    await lab.idle("kws-a")
    await lab.run(
        "r-batch", "kws-a", "kws01", "latency", options={"min_queries": 300, "min_duration_s": 1.0}
    )
    assert (await lab.finished("r-batch"))["event"] == "done"
    # Re-read the raw batches from the observer's receipts: at 2 ms per query many samples
    # share a message, and every batch is a valid SampleBatch.
    samples = lab.observer.unique_samples("r-batch")
    assert len(samples) >= 300
    batch = SampleBatch.model_validate(
        {
            "schema": "farm/v1",
            "agent": AGENT,
            "board": "kws-a",
            "run": "r-batch",
            "samples": list(samples.values())[:5],
        }
    )
    assert batch.samples[0].seq == 0


async def test_commands_are_acknowledged_idempotent_and_validated(two_boards: Lab) -> None:
    lab = two_boards
    await lab.idle("kws-a")
    url = lab.broker.url
    # Malformed payloads: each rejected with its reason, counted; the agent keeps serving.
    await send(url, AGENT, b"{not json")
    # Nested past the parser's fixed depth (200): refused wherever the agent decodes it, where
    # json.loads's limit moved with the call stack's depth (this one it would have read).
    await send(url, AGENT, b'{"a":' * 300 + b"1" + b"}" * 300)
    await send(url, AGENT, {"id": "bad-type", "type": "reboot", "board": "kws-a"})
    await send(
        url,
        AGENT,
        {
            "id": "bad-field",
            "type": "run",
            "board": "kws-a",
            "run": "x",
            "benchmark": "kws01",
            "mode": "fast",
        },
    )
    await send(url, AGENT, {"id": "no-board", "type": "health-check", "board": "nope"})
    await send(
        url, AGENT, {"id": "old", "type": "health-check", "board": "kws-a", "schema": "farm/v0"}
    )
    await send(url, AGENT, b'{"schema": "farm/v1", "pad": "' + b"x" * 70_000 + b'"}')
    await send(
        url,
        AGENT,
        {
            "id": "no-data",
            "type": "run",
            "board": "kws-a",
            "run": "r-x",
            "benchmark": "kws01",
            "mode": "accuracy",
            "dataset": "elsewhere",
        },
    )
    await send(
        url,
        AGENT,
        {
            "id": "sww",
            "type": "run",
            "board": "kws-a",
            "run": "r-y",
            "benchmark": "sww01",
            "mode": "accuracy",
        },
    )

    def rejected() -> list[dict]:
        return [a for a in lab.observer.acks if a["outcome"] == "rejected"]

    await wait_until(lambda: len(rejected()) >= 9, 15, "nine rejections")
    assert "recursion limit exceeded" in rejected()[1]["reason"]
    reasons = [a["reason"].split(":")[0] for a in rejected()]
    assert reasons == [
        "invalid_json",
        "invalid_json",
        "unknown_command",
        "invalid_command",
        "unknown_board",
        "unsupported_schema",
        "oversized",
        "invalid_run",
        "invalid_run",
    ]
    assert "mode" in lab.observer.ack("bad-field")["reason"]
    assert "elsewhere" in lab.observer.ack("no-data")["reason"]  # the missing dataset, named
    assert "sww01" in lab.observer.ack("sww")["reason"]

    # A health check, then the same command id again: acknowledged as a duplicate, not run.
    await send(url, AGENT, {"id": "hc-1", "type": "health-check", "board": "kws-a"})
    done = await wait_until(lambda: lab.observer.ack("hc-1", "done"), 30, "health check done")
    assert done["detail"]["model"] == "kws01"
    await send(url, AGENT, {"id": "hc-1", "type": "health-check", "board": "kws-a"})
    await wait_until(lambda: lab.observer.ack("hc-1", "duplicate"), 30, "duplicate ack")
    # A repeated run command id is not run twice either.
    command = await lab.run("r-once", "kws-a", "kws01", "accuracy", options={"limit": 3})
    await lab.finished("r-once")
    await send(
        url,
        AGENT,
        {
            "type": "run",
            "id": command,
            "board": "kws-a",
            "run": "r-once",
            "benchmark": "kws01",
            "mode": "accuracy",
        },
    )
    await wait_until(lambda: lab.observer.ack(command, "duplicate"), 30, "duplicate run ack")
    await asyncio.sleep(0.5)
    assert [e["event"] for e in lab.observer.events["r-once"]].count("started") == 1

    # The counters reach the heartbeat.
    await wait_until(
        lambda: any(
            h["counters"].get("commands_rejected_invalid_json") == 2
            for h in lab.observer.heartbeats
        ),
        15,
        "counters in a heartbeat",
    )


async def test_cancel_stops_a_run_and_leaves_the_board_idle_and_healthy(two_boards: Lab) -> None:
    lab = two_boards
    await long_latency_run(lab, "r-long", min_queries=100000, min_duration_s=600, flowing=20)
    await send(lab.broker.url, AGENT, {"type": "cancel", "id": "cancel-1", "run": "r-long"})
    cancelled = await lab.finished("r-long", within=10)
    assert cancelled["event"] == "cancelled"
    # Everything produced before the cancel was published, and nothing after it.
    unique = lab.observer.unique_samples("r-long")
    assert sorted(unique) == list(range(cancelled["count"]))
    status = await lab.idle("kws-a")
    assert status["health"] == "good"
    # The board takes the next run at once.
    await lab.run("r-after", "kws-a", "kws01", "accuracy", options={"limit": 3})
    assert (await lab.finished("r-after"))["event"] == "done"
    assert lab.observer.ack("cancel-1", "done")["board"] == "kws-a"


async def test_every_command_is_counted_once_by_its_answer(two_boards: Lab) -> None:
    """A run already on a board (under a new command id) and a cancel of a run not here are
    answered, and counted, like every other command: the fuzz suite's count of what an agent
    was sent relies on it."""
    lab = two_boards
    await long_latency_run(lab, "r-busy", min_queries=100000, min_duration_s=600, flowing=5)
    again = {"board": "kws-a", "run": "r-busy", "benchmark": "kws01", "mode": "latency"}
    await send(lab.broker.url, AGENT, {"type": "run", "id": "again", **again})
    await send(lab.broker.url, AGENT, {"type": "cancel", "id": "cancel-x", "run": "r-none"})
    await send(lab.broker.url, AGENT, {"type": "cancel", "id": "cancel-b", "run": "r-busy"})
    assert (await lab.finished("r-busy", within=10))["event"] == "cancelled"
    assert lab.observer.ack("again", "duplicate") is not None
    assert lab.observer.ack("cancel-x", "failed") is not None
    # The run and the cancel that found it were accepted; nothing was rejected.
    expected = {"commands_accepted": 2, "commands_duplicate": 1, "commands_failed": 1}
    beat = await wait_until(
        lambda: next(
            (
                h
                for h in reversed(lab.observer.heartbeats)
                if all(h["counters"].get(k) == v for k, v in expected.items())
            ),
            None,
        ),
        30,
        f"{expected} in a heartbeat",
    )
    assert not [k for k in beat["counters"] if k.startswith("commands_rejected")], beat


async def test_a_run_for_another_model_flashes_the_board_first(two_boards: Lab) -> None:
    lab = two_boards
    assert (await lab.idle("ic-b"))["model"] == "ic01"
    await lab.run("r-flash", "ic-b", "vww01", "accuracy", options={"limit": 2})
    done = await lab.finished("r-flash", within=60)
    assert done["event"] == "done", done
    logs = [e["message"] for e in lab.observer.events["r-flash"] if e["event"] == "log"]
    assert any("flashing vww01 performance" in m for m in logs), logs
    started = lab.observer.event("r-flash", "started")
    assert started["model"] == "vww01"
    status = await lab.idle("ic-b")
    assert (status["model"], status["health"]) == ("vww01", "good")
    # An explicit flash back, then a health check that passes.
    await send(
        lab.broker.url, AGENT, {"type": "flash", "id": "fl-1", "board": "ic-b", "model": "ic01"}
    )
    flashed = await wait_until(
        lambda: lab.observer.ack("fl-1", "done") or lab.observer.ack("fl-1", "failed"), 30, "flash"
    )
    assert flashed["outcome"] == "done", flashed
    assert flashed["detail"]["model"] == "ic01"
    assert (await lab.idle("ic-b"))["model"] == "ic01"


async def test_after_a_flash_the_board_is_asked_at_the_new_images_rate(tmp_path: Path) -> None:
    """ad01 firmware talks at 921600 baud, kws01 at 115200: after flashing kws01 the check
    must not first try the rate the old image used (a whole resync timeout lost per flash)."""
    lab = await start_lab(tmp_path, f"- {{id: ad-a, model: ad01, latency: {json.dumps(FAST)}}}\n")
    try:
        assert (await lab.idle("ad-a"))["model"] == "ad01"
        await lab.run("r-to-kws", "ad-a", "kws01", "accuracy", options={"limit": 2})
        done = await lab.finished("r-to-kws", within=60)
        assert done["event"] == "done", done
        assert lab.observer.event("r-to-kws", "started")["model"] == "kws01"
        log = lab.agent.output()
        after_flash = log[log.index("event=flashed board=ad-a model=kws01") :]
        assert "event=health_check_passed board=ad-a model=kws01" in after_flash
        assert "event=identify_no_answer" not in after_flash, after_flash[:2000]
    finally:
        await stop_lab(lab)


async def test_a_board_configured_fast_runs_a_flashed_model_at_its_rate(tmp_path: Path) -> None:
    """A board whose config sets 921600 baud for its own firmware (as `farm demo --quick`
    does) is flashed with a model whose image talks at 115200: the run must use the rate the
    board answered the health check at, not the configured one."""
    lab = await start_lab(
        tmp_path, f"- {{id: kws-q, model: kws01, baud: 921600, latency: {json.dumps(FAST)}}}\n"
    )
    try:
        assert (await lab.idle("kws-q"))["model"] == "kws01"
        await lab.run("r-vww", "kws-q", "vww01", "accuracy", options={"limit": 2})
        done = await lab.finished("r-vww", within=60)
        assert done["event"] == "done", done
        assert lab.observer.event("r-vww", "started")["model"] == "vww01"
        # And back: its own firmware at the configured rate again.
        await lab.run("r-kws", "kws-q", "kws01", "accuracy", options={"limit": 2})
        assert (await lab.finished("r-kws", within=60))["event"] == "done"
    finally:
        await stop_lab(lab)


async def test_broker_restart_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lab = await start_lab(tmp_path, KWS_A)
    try:
        await long_latency_run(lab, "r-outage", min_queries=400, min_duration_s=6)
        await lab.broker.stop()
        await asyncio.sleep(2.0)  # the run goes on; its samples wait in the journal
        await lab.broker.start()
        done = await lab.finished("r-outage", within=60)
        assert done["event"] == "done"
        assert_complete(lab, "r-outage", done["count"])
        # The agent noticed the outage and came back.
        beats = lab.observer.heartbeats
        await wait_until(
            lambda: any(h["counters"].get("disconnects", 0) >= 1 for h in beats),
            15,
            "disconnect counted",
        )
    finally:
        await stop_lab(lab)


async def test_killed_agent_leaves_its_will_and_reports_the_interrupted_run(tmp_path: Path) -> None:
    lab = await start_lab(tmp_path, KWS_A)
    try:
        await long_latency_run(lab, "r-kill", min_queries=100000, min_duration_s=600)
        # A second run waits behind the first; the same run id for another board is refused.
        await lab.run("r-queued", "kws-a", "kws01", "accuracy")
        await wait_until(lambda: lab.observer.event("r-queued", "accepted"), 30, "queued")
        await send(
            lab.broker.url,
            AGENT,
            {
                "type": "run",
                "id": "again",
                "board": "kws-a",
                "run": "r-kill",
                "benchmark": "kws01",
                "mode": "accuracy",
            },
        )
        await wait_until(lambda: lab.observer.ack("again", "duplicate"), 30, "duplicate run id")
        await lab.agent.signal(signal.SIGKILL)
        offline = await wait_until(
            lambda: (
                lab.observer.agent_status[AGENT]["state"] == "offline"
                and lab.observer.agent_status[AGENT]
            ),
            30,
            "the last will",
        )
        assert offline["reason"] == "connection lost"
        await lab.start_agent()
        interrupted = await wait_until(
            lambda: lab.observer.event("r-kill", "interrupted"), 30, "interrupted event"
        )
        # Everything up to the reported seq reaches the broker (resent from the journal).
        last = interrupted["last_seq"]
        await wait_until(
            lambda: len(lab.observer.unique_samples("r-kill")) >= last + 1, 15, "journalled samples"
        )
        assert sorted(lab.observer.unique_samples("r-kill"))[: last + 1] == list(range(last + 1))
        assert lab.observer.agent_status[AGENT]["state"] == "online"
        # The queued run never started, and is reported too: the controller sends it again.
        queued = await wait_until(
            lambda: lab.observer.event("r-queued", "interrupted"), 30, "queued"
        )
        assert queued["last_seq"] is None
        assert "started" not in [e["event"] for e in lab.observer.events["r-queued"]]
        await lab.idle("kws-a")
    finally:
        await stop_lab(lab)


async def test_a_hung_board_fails_the_run_with_a_reason_and_loses_health(tmp_path: Path) -> None:
    lab = await start_lab(
        tmp_path,
        f"""\
        - id: kws-h
          model: kws01
          latency: {json.dumps(FAST)}
          faults: [{{kind: hang, command: infer, after: 4, count: null}}]
        """,
    )
    try:
        await lab.idle("kws-h")
        await lab.run("r-hang", "kws-h", "kws01", "accuracy", options={"retries": 1})
        failed = await lab.finished("r-hang", within=90)
        assert failed["event"] == "error" and failed["kind"] in ("device", "infrastructure")
        assert "DeviceTimeout" in failed["reason"] or "Resync" in failed["reason"], failed
        assert failed["count"] == 4 and failed["last_seq"] == 3
        logs = [e["message"] for e in lab.observer.events["r-hang"] if e["event"] == "log"]
        assert any("recovering" in m for m in logs) and any("power-cycled" in m for m in logs), logs
        status = await wait_until(
            lambda: lab.board("kws-h")["state"] == "idle" and lab.board("kws-h"), 30, "idle"
        )
        assert status["health"] in ("unknown", "bad") and status["last_error"]
    finally:
        await stop_lab(lab)


async def test_a_refused_agent_says_so_and_takes_no_runs(two_boards: Lab) -> None:
    lab = two_boards
    await lab.idle("kws-a")
    await send(
        lab.broker.url,
        AGENT,
        {"type": "refuse", "id": "refuse-1", "reason": "protocol 1 is not supported"},
    )
    status = await wait_until(
        lambda: (
            lab.observer.agent_status[AGENT]["state"] == "refused"
            and lab.observer.agent_status[AGENT]
        ),
        30,
        "refused status",
    )
    assert status["reason"] == "protocol 1 is not supported"
    await lab.run("r-refused", "kws-a", "kws01", "accuracy")
    ack = await wait_until(lambda: lab.observer.ack("cmd-r-refused"), 30, "ack")
    assert ack["outcome"] == "rejected" and "refused" in ack["reason"]
    assert "refused_by_controller" in lab.agent.output()


async def test_an_accuracy_run_resumes_without_the_seqs_the_controller_holds(
    two_boards: Lab,
) -> None:
    lab = two_boards
    await lab.idle("kws-a")
    await lab.run("r-resume", "kws-a", "kws01", "accuracy", stored=[[0, 8], [12, 15]], attempt=2)
    done = await lab.finished("r-resume")
    assert done["event"] == "done", done
    # The run's total stays the run's (20 samples), not what this attempt has left to run.
    assert lab.observer.event("r-resume", "started")["total"] == 20
    # Every event of the run names the attempt it belongs to.
    assert {e["attempt"] for e in lab.observer.events["r-resume"]} == {2}
    assert lab.observer.batch_attempts["r-resume"] == {2}  # and every sample batch
    unique = lab.observer.unique_samples("r-resume")
    assert sorted(unique) == [8, 9, 10, 11, *range(15, 20)]
    assert (done["count"], done["skipped"], done["first_seq"], done["last_seq"]) == (9, 11, 8, 19)
    assert done["digest"] == sample_digest(unique.values())
    # Each sample is still the dataset row of its seq (a stratified subset's rows keep their
    # numbers in the official index).
    rows = load_dataset(lab.dir / "sim" / "datasets", "kws01").rows
    assert all(record["index"] == rows[seq].index for seq, record in unique.items())


async def test_energy_runs_through_the_monitor_then_a_flash_back_to_performance(
    tmp_path: Path,
) -> None:
    lab = await start_lab(tmp_path, "- {id: kws-e, model: kws01, energy: true, firmware: energy}\n")
    try:
        status = await lab.idle("kws-e")
        assert (status["model"], status["build"], status["energy"]) == ("kws01", "energy", True)
        options = {"limit": 2, "min_window_s": 1.0, "calibration_s": 0.2}
        await lab.run("r-energy", "kws-e", "kws01", "energy", options=options)
        done = await lab.finished("r-energy", within=90)
        assert done["event"] == "done", done
        windows = lab.observer.unique_samples("r-energy")
        assert sorted(windows) == [0, 1]
        for w in windows.values():
            # The simulated board draws 30 mW for 5 ms per inference (the sim defaults).
            per_inference = w["energy_j"] / w["count"]
            assert 120e-6 < per_inference < 190e-6, per_inference
            assert len(w["power_samples"]) > 500 and len(w["power_events"]) >= 2
        assert done["digest"] == sample_digest(windows.values())
        # The same board in accuracy mode needs the performance build: flashed first.
        await lab.run("r-perf", "kws-e", "kws01", "accuracy", options={"limit": 2})
        done = await lab.finished("r-perf", within=60)
        assert done["event"] == "done", done
        assert lab.observer.event("r-perf", "started")["build"] == "performance"
    finally:
        await stop_lab(lab)


async def test_boards_start_in_turn_as_max_starting_allows(tmp_path: Path) -> None:
    """max_starting 1: four boards given their runs at once still start one at a time (the
    agent's start-up checks too): no board's health check overlaps another's, and every run
    completes. Each run goes on with the port its health check opened: one open a run."""
    boards = "".join(
        f"- {{id: kws-{n}, model: kws01, latency: {json.dumps(FAST)}}}\n" for n in range(4)
    )

    def one_at_a_time(config: Path) -> None:
        config.write_text(config.read_text() + "max_starting: 1\n")

    lab = await start_lab(tmp_path, boards, agent_config=one_at_a_time)
    try:
        for n in range(4):
            await lab.idle(f"kws-{n}")
        for n in range(4):
            await lab.run(f"r-{n}", f"kws-{n}", "kws01", "accuracy", options={"limit": 3})
        for n in range(4):
            assert (await lab.finished(f"r-{n}"))["event"] == "done"
        seen: dict[tuple[str, str], list[str]] = {}
        pattern = r"ts=(\S+) .*event=(serial_open|serial_close|health_check_passed) .*(kws-\d)"
        for line in lab.agent.output().splitlines():
            if found := re.search(pattern, line):
                stamp, what, board = found.groups()
                seen.setdefault((what, board), []).append(stamp)
        names = [f"kws-{n}" for n in range(4)]
        # Per board: its start-up check (open, close), then its run: the run's check opens
        # the port and the run goes on with it to the end (one open, one close).
        for board in names:
            assert len(seen["serial_open", board]) == len(seen["serial_close", board]) == 2
        startup = sorted((seen["serial_open", b][0], seen["serial_close", b][0]) for b in names)
        checks = sorted(
            (seen["serial_open", b][1], seen["health_check_passed", b][1]) for b in names
        )
        for spans in (startup, checks):
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    finally:
        await stop_lab(lab)
