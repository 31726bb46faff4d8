"""Sharded accuracy runs end to end: `farm submit --shard` splits one accuracy run across
boards running the same firmware (real agents, `farm sim` boards, Redis, RQ, Mosquitto), and
the merged run's numbers and official files are those of the same run on one board."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from controller.retention import trim_sweeps
from tests.integration.controller_lab import ControllerLab
from tests.integration.farm_procs import wait_until

#: Three kws01 boards with the same firmware, quality and fixed inference time: a board's
#: output for a file is a function of those alone, so one board or three give the same.
BOARDS = "".join(
    f"- {{id: kws-{n}, model: kws01, quality: 0.8, latency: {{median_s: 0.002, spread: 0}}}}\n"
    for n in (1, 2, 3)
)
FILES = 30
#: The official results.txt prefix: a time stamp that differs between any two runs.
STAMP = re.compile(r"^\d{4}\.\d{6} ")


async def finished(lab: ControllerLab, run_id: str) -> dict[str, str]:
    await wait_until(
        lambda: lab.redis.hget(f"farm:run:{run_id}", "state") in ("completed", "failed"),
        180,
        f"run {run_id} ends",
    )
    return lab.redis.hgetall(f"farm:run:{run_id}")


def official_files(run: dict[str, str]) -> tuple[list[str], list[dict[str, Any]]]:
    """results.txt without its time stamps, and results.json without the DUT timer's start
    and end stamps and the time between them (which holds the printing of a stamp, longer as
    the board's uptime grows): all differ between two runs on one board."""
    folder = Path(run["artifacts"])
    lines = [STAMP.sub("", line) for line in (folder / "results.txt").read_text().splitlines()]
    elements = json.loads((folder / "results.json").read_text())
    for element in elements:
        infer = element.get("infer")
        if infer:
            del infer["start_time"], infer["end_time"], infer["elapsed_time"]
    return lines, elements


async def test_a_sharded_accuracy_run_equals_the_same_run_on_one_board(
    lab: ControllerLab,
) -> None:
    await lab.add_agent("pi-a", BOARDS, dataset_limit=FILES)
    await lab.start_controller(workers=2)
    await lab.boards_ready(["kws-1", "kws-2", "kws-3"])
    common = ("--benchmark", "kws", "--mode", "accuracy", "--limit", str(FILES), "--json")

    _, out, _ = await lab.farm("submit", "--boards", "kws-1", *common)
    single = await finished(lab, json.loads(out)["runs"][0])
    assert single["state"] == "completed", single

    # --wait follows the run through its shards and exits 0 once it completed.
    _, out, _ = await lab.farm("submit", "--shard", "--wait", *common)
    submitted = json.loads(out)
    assert len(submitted["runs"]) == 1, submitted  # one run, not one per board
    parent_id = submitted["runs"][0]
    assert submitted["shards"] == {parent_id: ["kws-1", "kws-2", "kws-3"]}
    merged = await finished(lab, parent_id)
    assert merged["state"] == "completed", merged

    # Each shard ran its own third of the inputs on its own board, and nothing else.
    shard_ids = json.loads(merged["shards"])
    for k, shard_id in enumerate(shard_ids):
        shard = lab.redis.hgetall(f"farm:run:{shard_id}")
        assert (shard["state"], shard["board"], shard["attempts"]) == (
            "completed",
            f"kws-{k + 1}",
            "1",
        ), shard
        done = json.loads(shard["final"])
        assert (done["count"], done["first_seq"], done["last_seq"]) == (10, 10 * k, 10 * k + 9)
        transcript = lab.dir / "sim-pi-a" / f"kws-{k + 1}" / "dut.transcript.jsonl"
        assert "db load" in transcript.read_text()

    # The same numbers and official files as the single-board run.
    one, many = json.loads(single["summary"]), json.loads(merged["summary"])
    assert many["samples"] == one["samples"] == FILES
    assert one["top1"] == 80.0  # a quality 0.8 board answers 24 of 30 files right
    assert {**many, "artifacts": ""} == {**one, "artifacts": ""}
    assert official_files(merged) == official_files(single)
    assert Path(merged["artifacts"]).parts[-3:] == ("kws-1", "kws01", "accuracy")
    assert json.loads(merged["firmware"])["model"] == "kws01"

    # The sweep lists the one run and is finished with it.
    sweep = submitted["sweep"]
    assert lab.redis.lrange(f"farm:sweep:{sweep}:runs", 0, -1) == [parent_id]
    await wait_until(
        lambda: lab.redis.hget(f"farm:sweep:{sweep}", "state") == "finished", 30, "sweep ends"
    )
    _, out, _ = await lab.farm("show", sweep, "--json")
    assert json.loads(out)["sweep"]["total"] == 1
    shown = json.loads(out)["runs"]
    assert [(r["id"], r["state"], r["shards"]) for r in shown] == [
        (parent_id, "completed", ["kws-1", "kws-2", "kws-3"])
    ]
    # Trimmed with its sweep, the run takes its shards and their samples along.
    assert sweep in trim_sweeps(lab.redis, 0, time.time() + 1)
    for key in [parent_id, *shard_ids]:
        assert not lab.redis.exists(f"farm:run:{key}", f"farm:run:{key}:samples"), key
    assert not lab.redis.exists(f"farm:run:{parent_id}:verified", f"farm:run:{parent_id}:merger")


async def test_a_cancelled_shard_ends_its_run_and_the_other_shards(
    lab: ControllerLab,
) -> None:
    """One shard is cancelled mid-run (a shard that fails ends its run the same way): the
    merged run cannot be whole, so it ends so too, and the other shards are stopped."""
    await lab.add_agent("pi-a", BOARDS, dataset_limit=300)
    await lab.start_controller(workers=2)
    await lab.boards_ready(["kws-1", "kws-2", "kws-3"])
    _, out, _ = await lab.farm(
        "submit", "--shard", "--benchmark", "kws", "--mode", "accuracy", "--limit", "300"
    )
    parent_id = out.split()[-1] + "-r000"
    shard_ids = json.loads(lab.redis.hget(f"farm:run:{parent_id}", "shards"))
    assert f"run {parent_id} split across 3 boards: kws-1, kws-2, kws-3" in out
    await wait_until(
        lambda: lab.redis.hlen(f"farm:run:{shard_ids[1]}:samples") >= 5, 60, "shard 1 under way"
    )
    await lab.farm("cancel", shard_ids[1])

    parent = await finished_or_cancelled(lab, parent_id)
    assert parent["state"] == "cancelled", parent
    assert f"shard {shard_ids[1]} on kws-2 cancelled" in parent["reason"], parent
    for shard_id in shard_ids:
        shard = await finished_or_cancelled(lab, shard_id)
        assert shard["state"] == "cancelled", shard
        assert lab.redis.hlen(f"farm:run:{shard_id}:samples") < 100  # stopped, not finished


async def finished_or_cancelled(lab: ControllerLab, run_id: str) -> dict[str, str]:
    await wait_until(
        lambda: (
            lab.redis.hget(f"farm:run:{run_id}", "state") in ("completed", "failed", "cancelled")
        ),
        120,
        f"run {run_id} ends",
    )
    return lab.redis.hgetall(f"farm:run:{run_id}")
