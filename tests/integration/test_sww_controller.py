"""sww01 through the controller, every part real: `farm submit --benchmark sww` on a
simulated sww01 board (its interface board, LPM01A and detector model), its agent over a
private Mosquitto, ingest and RQ workers on Redis. The sweep plans one energy stream (the
default modes, performance and accuracy, both stand for it), and the controller scores the
stored sample to the detector's configuration: a 14 s wav with 4 wakewords, 2 missed, 1 false
detection. ``farm export submission`` refuses that stream (not an official truth file) and
one of the official 10 s file (3 wakewords, not the long file's 50), one line each."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.controller_lab import ControllerLab

TRUTH = [
    {
        "wav_file": "test14.wav",
        "detection_windows": [[1.0, 1.5], [4.0, 4.4], [8.0, 8.5], [11.0, 11.4]],
        "length_sec": 14.0,
        "sample_rate": 16000,
    }
]


async def test_submit_sww_scores_the_stream(lab: ControllerLab) -> None:
    truth = lab.dir / "test14.json"
    truth.write_text(json.dumps(TRUTH))
    boards = f"""\
- id: sww-1
  model: sww01
  energy: true
  firmware: energy
  latency: {{median_s: 0.016, spread: 0.02}}
  sww: {{truth: [sww_short_test.json, "{truth}"], miss: [1, 3], false_at_s: [7.0]}}
"""
    # The stream's power trace (some 14,000 samples) goes in chunks of 4,000, as a 1,200 s
    # stream's 1.2 M samples go in chunks of 65,536.
    await lab.add_agent("pi-a", boards, agent_config={"trace_chunk_values": 4000})
    # The agent's dataset root gets the truth file (the sim wrote the official ones).
    datasets = lab.dir / "sim-pi-a" / "datasets" / "sww01"
    assert (datasets / "sww_long_test.json").is_file()
    (datasets / "test14.json").write_text(truth.read_text())
    await lab.start_controller(workers=1)
    await lab.boards_ready(["sww-1"], within=120)

    _, out, _ = await lab.farm(
        "submit", "--benchmark", "sww", "--truth", "test14.json", "--wait", "--json"
    )
    submitted = json.loads(out)
    assert len(submitted["runs"]) == 1 and submitted["skipped"] == []
    _, out, _ = await lab.farm("show", submitted["sweep"], "--json")
    (run,) = json.loads(out)["runs"]
    assert (run["benchmark"], run["mode"], run["state"]) == ("sww01", "energy", "completed"), run
    summary = run["summary"]
    assert (summary["true_positives"], summary["false_negatives"], summary["false_positives"]) == (
        2,
        2,
        1,
    )
    assert summary["f1"] == 2 * 2 / (2 * 2 + 1 + 2)
    assert summary["duty_cycle"] > 0.4 and summary["throughput_ips"] > 50
    assert summary["power_mw"] > 5.0  # above the idle draw
    assert summary["target_met"] is True and summary["valid"] is False
    assert any("test14.json is not an official one" in p for p in summary["problems"])
    folder = Path(summary["artifacts"])
    assert folder.parts[-3:] == ("sww-1", "sww01", "energy")
    text = (folder / "results.txt").read_text()
    assert "Accuracy: 2 True positives, 2 False negatives, 1 False positives" in text
    assert text.startswith("Power Edition Output\n")
    (element,) = json.loads((folder / "results.json").read_text())
    assert element["infer"]["detection_windows"] == TRUTH[0]["detection_windows"]
    assert element["infer"]["wav_file"] is None  # the controller has not that truth file
    assert (folder / "energy_inf_000.png").is_file()
    counters = lab.redis.hgetall("farm:ingest:counters")
    assert int(counters["accepted_trace_chunk"]) >= 4, counters
    assert len(element["power"]["samples"]) > 3 * 4000

    # sww01 has no latency mode: asked for it alone, nothing runs and the reason is given.
    code, _, errs = await lab.farm(
        "submit", "--benchmark", "sww", "--mode", "latency", "--json", check=False
    )
    assert code == 2 and "sww01 has no latency mode" in " ".join(errs.split())

    # The export: neither stream can be submitted, in either division; one line each.
    _, out, _ = await lab.farm(
        "submit", "--benchmark", "sww", "--truth", "sww_short_test.json", "--wait", "--json"
    )
    short = json.loads(out)["sweep"]
    _, out, _ = await lab.farm("show", short, "--json")
    (short_run,) = json.loads(out)["runs"]
    assert short_run["state"] == "completed", short_run
    assert short_run["summary"]["true_positives"] + short_run["summary"]["false_negatives"] == 3
    for division in ("closed", "open"):
        target = lab.dir / f"submission-{division}"
        code, doc, errs = await lab.export_submission(
            target, submitted["sweep"], short, division=division
        )
        assert (code, doc) == (1, {}), errs
        assert [line for line in errs.splitlines() if line.startswith("refused ")] == [
            f"refused sww-1 sww01 energy (run {run['id']}): a stream of test14.json, not an "
            "official truth file (sww_long_test.json, sww_med_test.json, sww_short_test.json): "
            "not valid for submission",
            f"refused sww-1 sww01 energy (run {short_run['id']}): subset: the stream of "
            "sww_short_test.json has 3 wakewords (TP + FN), the checker needs 50 "
            "(sww_long_test.json)",
        ]
        assert not target.exists()
