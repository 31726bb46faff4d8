"""A user's test script, run end to end on simulated boards: by ``farm run`` (in this event
loop, the simulator's ground truth at hand) and by an open-division sweep through the whole
farm (``farm submit --script``: Mosquitto, Redis, RQ workers, ingest, a `farm sim` board and
its agent). The script's steps reach the DUT as written: the simulator records every
``infer`` phase it ran (N timed inferences, W warmups), and the run records the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.runner import RunSettings, SilentPhaseTooLong
from farm.dataset_synth import synth_dataset
from farm.scripts import load_test_script
from tests.integration import test_farm_run
from tests.integration.controller_lab import ControllerLab
from tests.integration.test_farm_run import (
    SHORT,
    SimFactory,
    board,
    bodies,
    infer_records,
    request,
    run,
)

#: An open-division variant of kws01: three windows of 40 inferences after 2 warmups, and an
#: accuracy pass over the first 4 files with 3 inferences after 1 warmup each.
PERFORMANCE = """\
kws01:
  name: keyword_spotting
  model: kws01
  truth_file: y_labels.csv
  script:
    - loop 3:
      - download
      - infer 40 2
"""
#: The simulated boards of ``farm run``'s own tests.
sim = test_farm_run.sim

ACCURACY = PERFORMANCE.replace("loop 3", "loop 4").replace("infer 40 2", "infer 3 1")


async def test_farm_run_follows_the_script_as_written(sim: SimFactory, tmp_path: Path) -> None:
    s = await sim(board("b", "kws01", baud=921600, median_s=0.001, spread=0.0, quality=0.9))
    synth_dataset(tmp_path / "ds", "kws01", limit=12)
    perf_file = tmp_path / "tests_performance.yaml"
    perf_file.write_text(PERFORMANCE)
    perf = load_test_script(perf_file)
    req = request(s["b"], "kws01", "performance", tmp_path / "ds", tmp_path / "runs")
    req.settings = RunSettings(**SHORT, windows=3)
    req.script = perf.for_benchmark("kws01")
    folder = await run(req)

    timed = [(r.phase, r.count) for r in list(s["b"].dut.records)]
    # After the calibration's growing windows, exactly the script's: 3 x (2 warmups, 40).
    assert timed[-6:] == [("warmup", 2), ("infer", 40)] * 3, timed
    assert infer_records(s["b"])[0].count == 1  # the calibration (which times replies) first
    text = (folder.path / "results.txt").read_text()
    # Three windows: the official runner's ERROR 1, and no median.
    assert bodies(text)[-1] == "ERROR 1 - loop_count was not exactly 5."
    assert "Median throughput" not in text
    elements = json.loads((folder.path / "results.json").read_text())
    assert [e["infer"]["iterations"] for e in elements if "infer" in e] == [40, 40, 40]
    digest = hashlib.sha256(PERFORMANCE.encode()).hexdigest()
    log = (folder.path / "log.txt").read_text()
    assert (
        f"test script tests_performance.yaml sha256:{digest}: loop 3: download; infer 40 2 "
        "(N as written)"
    ) in log

    acc_file = tmp_path / "tests_accuracy.yaml"
    acc_file.write_text(ACCURACY)
    before = len(s["b"].dut.records)
    req = request(s["b"], "kws01", "accuracy", tmp_path / "ds", tmp_path / "runs")
    req.script = load_test_script(acc_file).for_benchmark("kws01")
    folder = await run(req)
    assert [(r.phase, r.count) for r in list(s["b"].dut.records)[before:]] == [
        ("warmup", 1),
        ("infer", 3),
    ] * 4
    samples = (folder.path / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 4  # the first 4 files, as loop 4 says
    # 4 of the 12 files: the run says it is not valid for submission.
    assert "the test script runs 4 of the 12 files of the index" in " ".join(folder.problems)

    # Warmups longer than a direct link lets the DUT stay silent (1 s in these settings):
    # the official runner would abort, so the run stops after its calibration, saying why.
    perf_file.write_text(PERFORMANCE.replace("infer 40 2", "infer 40 2000"))
    req = request(s["b"], "kws01", "performance", tmp_path / "ds", tmp_path / "runs")
    req.settings = RunSettings(**SHORT, windows=3)
    req.script = load_test_script(perf_file).for_benchmark("kws01")
    with pytest.raises(SilentPhaseTooLong, match=r"the 2000 warmups take 2\.\d s on this board"):
        await run(req)


async def test_an_open_division_sweep_runs_a_users_script(lab: ControllerLab) -> None:
    script = lab.dir / "variant.yaml"
    script.write_text(PERFORMANCE.replace("loop 3", "loop 5").replace("infer 40 2", "infer 30 3"))
    await lab.add_agent(
        "pi-a",
        "- {id: kws-1, model: kws01, baud: 921600, latency: {median_s: 0.002, spread: 0}}\n",
    )
    await lab.start_controller(workers=1)
    await lab.boards_ready(["kws-1"])
    quick = json.dumps({"min_window_s": 0.5, "calibration_s": 0.2})
    # A file named for no mode says so, and nothing is queued.
    code, _, errs = await lab.farm(
        "submit", "--benchmark", "kws", "--script", str(script), "--json", check=False
    )
    assert code == 2 and "say which mode it is for" in " ".join(errs.split())
    _, out, _ = await lab.farm(
        "submit",
        "--benchmark",
        "kws",
        "--mode",
        "performance,accuracy",
        "--script",
        f"performance={script}",
        "--options",
        quick,
        "--wait",
        "--json",
    )
    sweep = json.loads(out)["sweep"]
    _, out, _ = await lab.farm("show", sweep, "--json")
    runs = {r["mode"]: r for r in json.loads(out)["runs"]}
    assert {m: r["state"] for m, r in runs.items()} == {
        "performance": "completed",
        "accuracy": "completed",
    }, runs
    perf = runs["performance"]
    options = json.loads(lab.redis.hget(f"farm:run:{perf['id']}", "options") or "{}")
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    assert options["script"]["source"] == "variant.yaml"
    assert options["script"]["sha256"] == digest
    assert "script" not in json.loads(
        lab.redis.hget(f"farm:run:{runs['accuracy']['id']}", "options") or "{}"
    )
    folder = Path(perf["summary"]["artifacts"])
    elements = json.loads((folder / "results.json").read_text())
    assert [
        (e["infer"]["iterations"], e["infer"]["warmups"]) for e in elements if "infer" in e
    ] == [(30, 3)] * 5
    assert (
        f"test script variant.yaml sha256:{digest}: loop 5: download; infer 30 3"
        in (folder / "log.txt").read_text()
    )

    # The closed division runs the official steps: this run goes to the open division only
    # (where its short windows, not its script, keep it out).
    reasons = {}
    for division in ("closed", "open"):
        code, _, errs = await lab.export_submission(lab.dir / division, sweep, division=division)
        assert code == 1
        reasons[division] = next(
            line for line in errs.splitlines() if line.startswith("refused kws-1 kws01 performance")
        )
    assert "test script variant.yaml runs loop 5: download; infer 30 3" in reasons["closed"]
    assert "the closed division runs loop 5: download; infer 70 10" in reasons["closed"]
    assert "test script" not in reasons["open"] and "shorter than 10.0 s" in reasons["open"]
