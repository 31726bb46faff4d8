"""``farm compare`` on sweeps stored in a real Redis the way the controller stores them: the
verdicts, the exit status a nightly job fails on, the formats, bad input."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest
import redis

from controller import keys
from controller.retention import trim_sweeps
from tests.integration.compare_data import (
    FakeRun,
    accuracy_records,
    by_metric,
    latency_records,
    store_sweep,
)
from tests.integration.controller_lab import REDIS_URL
from tests.integration.farm_procs import farm_command

LABELS = [i % 10 for i in range(20)]
#: The boards' nightly truth: throughput (inf/s), energy (µJ), predictions, latencies (µs).
THROUGHPUT = 250.0
ENERGY = 120.0
RIGHT = [*LABELS[:18], (LABELS[18] + 1) % 10, (LABELS[19] + 1) % 10]  # 18 of 20: 90 %


def night(
    rng: random.Random,
    *,
    slower: float = 1.0,
    energy: float = 1.0,
    predicted: list[int] | None = None,
    firmware: str = "sha-a",
) -> list[FakeRun]:
    """One night's runs: throughput and energy with 0.2 % run-to-run noise, latency
    queries with a 2 % per-inference spread."""
    predicted = predicted or RIGHT
    top1 = 100 * sum(p == y for p, y in zip(predicted, LABELS, strict=True)) / len(LABELS)
    latencies = [round(4000 * slower * rng.lognormvariate(0, 0.02)) for _ in range(300)]
    ordered = sorted(latencies)
    identity = {"image": "ic01-performance.bin", "sha256": firmware}
    return [
        FakeRun(
            "b-perf",
            "ic01",
            "performance",
            {"throughput_ips": THROUGHPUT / slower * rng.gauss(1, 0.002)},
            firmware=identity,
        ),
        FakeRun("b-energy", "ic01", "energy", {"energy_uj": ENERGY * energy * rng.gauss(1, 0.002)}),
        FakeRun(
            "b-acc",
            "ic01",
            "accuracy",
            {"top1": top1, "target": 85.0, "target_met": top1 >= 85},
            samples=accuracy_records(predicted, LABELS),
        ),
        FakeRun(
            "b-lat",
            "ic01",
            "latency",
            {"p90_us": ordered[270], "p90_early_stop_us": ordered[300 - 14]},
            samples=latency_records(latencies),
        ),
    ]


async def compare(*args: str) -> tuple[int, str, str]:
    return await farm_command(["compare", *args], {"FARM_REDIS_URL": REDIS_URL}, 120)


async def test_injected_regressions_are_worse_with_their_cause(
    client: redis.Redis, tmp_path: Path
) -> None:
    rng = random.Random(3)
    for n in range(6):
        store_sweep(client, tmp_path, f"sw-{n}", "nightly", 1000.0 + n, night(rng))
    # The seventh night: 3 % slower inference (and a new firmware image on the perf board),
    # 5 % more energy, one sample more misclassified (row 3).
    wrong = list(RIGHT)
    wrong[3] = (LABELS[3] + 1) % 10
    store_sweep(
        client,
        tmp_path,
        "sw-6",
        "nightly",
        1006.0,
        night(rng, slower=1.03, energy=1.05, predicted=wrong, firmware="sha-b"),
    )
    code, out, errs = await compare("sw-6", "--against", "nightly", "--last", "5", "--json")
    assert code == 1, errs
    doc = json.loads(out)
    assert doc["baseline"] == [f"sw-{n}" for n in range(1, 6)] and doc["regressed"] is True
    found = by_metric(doc)
    perf = found[("b-perf", "performance", "throughput_ips")]
    assert perf["verdict"] == "worse" and perf["change_pct"] == pytest.approx(-2.9, abs=0.6)
    assert perf["what_changed"] == [
        {"field": "firmware_sha256", "what": "firmware image", "before": "sha-a", "after": "sha-b"}
    ]
    energy = found[("b-energy", "energy", "energy_uj")]
    assert energy["verdict"] == "worse" and energy["change_pct"] == pytest.approx(5, abs=0.6)
    assert energy["what_changed"] == []
    top1 = found[("b-acc", "accuracy", "top1")]
    assert top1["verdict"] == "worse" and top1["change"] == pytest.approx(-5.0)
    assert [s["index"] for s in top1["changed_samples"]] == [3]
    assert top1["changed_samples"][0]["correct_before"] is True
    for metric in ("p90_us", "p90_early_stop_us"):
        lat = found[("b-lat", "latency", metric)]
        assert lat["verdict"] == "worse" and lat["interval"][0] > 0, lat
    # The same as a table (80 columns off a terminal), markdown and csv.
    code, table, _ = await compare("sw-6", "--against", "nightly", "--last", "5")
    assert code == 1 and "REGRESSED" in table and "worse" in table
    code, markdown, _ = await compare("sw-6", "sw-5", "--format", "markdown")
    assert code == 1 and "firmware image sha-a -> sha-b" in markdown
    code, text, _ = await compare("sw-6", "sw-5", "--format", "csv")
    rows = {(r["board"], r["metric"]): r for r in csv.DictReader(io.StringIO(text))}
    assert rows[("b-acc", "top1")]["samples_text"] == "3"
    assert rows[("b-energy", "energy_uj")]["verdict"] == "worse"


async def test_ten_identical_nights_raise_no_false_alarm(
    client: redis.Redis, tmp_path: Path
) -> None:
    rng = random.Random(11)
    for n in range(10):
        store_sweep(client, tmp_path, f"sw-{n}", "nightly", 1000.0 + n, night(rng))
    for n in range(1, 10):
        code, out, errs = await compare(f"sw-{n}", "--json")
        assert code == 0, errs
        doc = json.loads(out)
        assert doc["baseline"] == [f"sw-{n - 1}"] and len(doc["history"]) == n
        verdicts = {k: m["verdict"] for k, m in by_metric(doc).items()}
        assert set(verdicts.values()) == {"same"}, verdicts


async def test_sweeps_trimmed_from_redis_are_judged_from_the_history(
    client: redis.Redis, tmp_path: Path
) -> None:
    """Past the run retention a sweep's hashes leave Redis; the verdicts that used it stay
    the same, read from the run history and the run folders."""
    rng = random.Random(3)
    for n in range(6):
        store_sweep(client, tmp_path, f"sw-{n}", "nightly", 1000.0 + n, night(rng))
    store_sweep(
        client, tmp_path, "sw-6", "nightly", 1006.0, night(rng, slower=1.03, firmware="sha-b")
    )
    env = {"FARM_REDIS_URL": REDIS_URL, "FARM_RESULTS_DIR": str(tmp_path)}
    args = ["compare", "sw-6", "--against", "nightly", "--last", "5", "--json"]
    code, before, errs = await farm_command(args, env, 120)
    assert code == 1, errs
    assert trim_sweeps(client, 0, 1003.5) == ["sw-0", "sw-1", "sw-2", "sw-3"]
    assert not client.exists(keys.sweep("sw-2"), keys.run("sw-2-r000"))
    code, after, errs = await farm_command(args, env, 120)
    assert code == 1, errs
    kept, judged = json.loads(before), json.loads(after)
    assert judged["baseline"] == kept["baseline"] == [f"sw-{n}" for n in range(1, 6)]
    assert judged["history"] == kept["history"]
    assert by_metric(judged) == by_metric(kept)
    # A trimmed sweep as the baseline: its firmware identity is in the history too.
    code, out, errs = await farm_command(["compare", "sw-6", "sw-2", "--json"], env, 120)
    assert code == 1, errs
    perf = by_metric(json.loads(out))[("b-perf", "performance", "throughput_ips")]
    assert perf["verdict"] == "worse"
    assert perf["what_changed"] == [
        {"field": "firmware_sha256", "what": "firmware image", "before": "sha-a", "after": "sha-b"}
    ]


async def test_bad_input_is_one_line_and_status_2(client: redis.Redis, tmp_path: Path) -> None:
    store_sweep(client, tmp_path, "sw-0", "nightly", 1000.0, night(random.Random(1)))
    store_sweep(
        client, tmp_path, "sw-1", "nightly", 1001.0, night(random.Random(2)), state="running"
    )
    cases = {
        ("sw-x",): "no sweep 'sw-x'",
        ("sw-1", "sw-y"): "no baseline sweep 'sw-y'",
        ("sw-0",): "no finished sweep labelled 'nightly' before sw-0",
        ("sw-1", "sw-0", "--against", "nightly"): "not both",
        ("sw-0", "sw-0"): "compared with itself",
    }
    for args, message in cases.items():
        code, out, errs = await compare(*args)
        assert code == 2 and out == "", (args, out, errs)
        assert message in errs and len(errs.strip().splitlines()) == 1, errs
    # A sweep still running is no baseline for the next (only finished sweeps are good),
    # but it can be compared with the last good one.
    code, _, errs = await compare("sw-1")
    assert code == 0, errs
