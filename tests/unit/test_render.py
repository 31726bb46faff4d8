"""The listing formats: csv parses into one row per run with the validity reason, json keeps
real types, markdown is a pipe table, and a table fits 80 columns without splitting words."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from rich.console import Console

from controller.render import emit, table
from controller.sweep_view import SUMMARY_KEYS, results_listings, run_listing

PROBLEM = "subset: 10 of 1000 rows (not valid for submission)"


def summary(**numbers: object) -> dict[str, object]:
    base: dict[str, object] = dict.fromkeys(SUMMARY_KEYS)
    return {**base, "valid": False, "problems": [PROBLEM], "artifacts": "/r/x", **numbers}


def run(i: int, board: str, bench: str, mode: str, **numbers: object) -> dict[str, object]:
    return {
        "id": f"run-{i}",
        "board": board,
        "agent": "demo",
        "benchmark": bench,
        "mode": mode,
        "state": "completed",
        "reason": None,
        "attempts": 1,
        "summary": summary(**numbers),
    }


REPORT = {
    "sweep": {
        "id": "sw-1",
        "label": "demo",
        "created": 1.0,
        "state": "completed",
        "spec": {"benchmarks": ["kws01"]},
        "total": 5,
        "skipped": [],
    },
    "runs": [
        run(1, "sim-01-kws01", "kws01", "performance", latency_ms=5.123, throughput_ips=195.2),
        run(2, "sim-01-kws01", "kws01", "accuracy", top1=90.0, target=90.0, target_met=True),
        run(3, "sim-01-kws01", "kws01", "latency", p50_us=5000, p90_us=5100, p99_us=5300),
        run(4, "sim-04-ad01", "ad01", "accuracy", auc=0.88, target=0.85, target_met=True),
        {
            **run(5, "sim-04-ad01", "ad01", "energy"),
            "state": "failed",
            "reason": "boom",
            "summary": None,
        },
    ],
    "boards": {
        "sim-01-kws01": {
            "board_name": "tinyfarm simulated board (kws01)",
            "processor": "simulated DUT (farm.sim, on the host CPU)",
            "accelerator": "none",
            "software": "farm.sim synthetic model",
        },
        "sim-04-ad01": {
            "board_name": "tinyfarm simulated board (ad01)",
            "processor": "simulated DUT (farm.sim, on the host CPU)",
            "accelerator": "none",
            "software": "farm.sim synthetic model",
        },
    },
}


def printed(fmt: str, capsys: pytest.CaptureFixture[str], width: int = 80) -> str:
    console = Console(width=width, file=io.StringIO(), force_terminal=False)
    listings = [run_listing(REPORT)] if fmt == "csv" else results_listings(REPORT)
    emit(fmt, listings, REPORT, console)
    return capsys.readouterr().out + console.file.getvalue()  # type: ignore[attr-defined]


def test_csv_has_one_row_per_run_with_why_it_is_not_valid(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = list(csv.DictReader(io.StringIO(printed("csv", capsys))))
    assert [r["run"] for r in rows] == [f"run-{i}" for i in range(1, 6)]
    assert rows[0]["latency_ms"] == "5.123" and rows[0]["valid"] == "False"
    assert rows[0]["why_not_valid"] == PROBLEM
    assert rows[4]["why_not_valid"] == "failed: boom"


def test_json_keeps_numbers_and_objects(capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads(printed("json", capsys))
    assert document["sweep"]["spec"] == {"benchmarks": ["kws01"]}
    assert document["runs"][0]["summary"]["latency_ms"] == 5.123
    assert document["runs"][0]["summary"]["problems"] == [PROBLEM]


def test_markdown_is_a_pipe_table_with_the_legend(capsys: pytest.CaptureFixture[str]) -> None:
    text = printed("markdown", capsys)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[1].startswith("|---")
    cells = {line.count(" | ") for line in lines[:4] if not line.startswith("|---")}
    assert len(cells) == 1  # every row has every cell
    assert "ES p90" in text and "early-stopping" in text


@pytest.mark.parametrize("width", [80, 120])
def test_table_fits_the_width_and_splits_no_word(
    width: int, capsys: pytest.CaptureFixture[str]
) -> None:
    text = printed("table", capsys, width)
    assert max(len(line) for line in text.splitlines()) <= width
    # Whole cells wrap at spaces: the longest words appear intact.
    for word in ("sim-01-kws01", "90.0%", "5.123", "tinyfarm"):
        assert word in text
    assert "legend" not in text and "supplemental" in text  # the legend is printed


def test_narrow_table_says_which_columns_it_dropped() -> None:
    listing = results_listings(REPORT)[0]
    view = table(listing, 60)
    assert view.caption and "--format csv" in str(view.caption)
    headings = [str(c.header) for c in view.columns]
    assert "system" in headings and "accuracy (target)" in headings
    assert re.search("latency", " ".join(headings))


def test_an_sww_stream_fills_latency_and_accuracy_with_its_power() -> None:
    stream = run(
        6,
        "sim-05-sww01",
        "sww01",
        "energy",
        latency_ms=17.95,
        throughput_ips=55.71,
        f1=94 / 99,
        true_positives=47,
        false_negatives=3,
        false_positives=2,
        power_mw=17.0652,
        target=8,
        target_met=True,
    )
    report = {**REPORT, "runs": [stream], "boards": {}}
    (row,) = results_listings(report)[0].rows
    assert row["latency_ms"] == 17.95 and row["energy_uj"] is None
    assert row["quality"] == "F1 0.949, FN 3 FP 2 (<= 8) ok; 17.065 mW"
