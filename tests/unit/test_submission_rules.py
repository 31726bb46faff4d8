"""The submission rules of tests/submission_rules.py, each shown to bite: a tree the export
writes from runs the controller scored passes every rule; the same tree with one rule broken
fails with that rule's finding, and only that rule's. sww's rules are shown on a tree of its
own (its stream's results.json holds the whole 1,200 s power trace, 18 MB)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.results import finish_run
from controller.submission import Candidate, Export, select, write_tree
from farm.datasets import official_rows
from farm.sample import Sample
from farm.sww_truth import official_truth
from tests.submission_rules import RULES, check_tree
from tests.sww_streams import scored_stream, stream_record

BOARD = "board-1"
SYSTEM = {"status": "available", "board_name": "NUCLEO-L4R5ZI", "processor_name": "Cortex-M4"}
UNIT_J = 2.0**-15
IDLE_J = 2.0**-20
LONG = official_truth().entries[0]
#: 2.5 s after a window's end: outside its [start, end + 2 s], before the next one starts.
FALSE_AT = [LONG.windows[5][1] + 2.5, LONG.windows[30][1] + 2.5]


def run_hash(run: str, bench: str, mode: str) -> dict[str, str]:
    return {
        "id": run,
        "sweep": "sweep-1",
        "board": BOARD,
        "agent": "agent-1",
        "benchmark": bench,
        "mode": mode,
        "dataset": "",
        "options": "",
    }


def one_hot(label: int, classes: int) -> tuple[float, ...]:
    return tuple(1.0 if k == label else 0.0 for k in range(classes))


def accuracy(tmp: Path, bench: str, classes: int, wrong: int) -> dict[str, Any]:
    """Every official row of ``bench``, the first ``wrong`` answered with the next class."""
    rows = official_rows("ic01" if bench == "ic02" else bench)
    records = [
        Sample(
            seq=i,
            index=row.index,
            segment=None,
            window=None,
            label=row.label,
            results=one_hot((row.label + (i < wrong)) % classes, classes),
            count=1,
            warmup=0,
            start_us=0,
            end_us=10,
            elapsed_us=10,
            latency_us=10.0,
            wrapped=False,
            wall_s=0.01,
        ).to_record()
        for i, row in enumerate(rows)
    ]
    info = {"count": None, "warmup": 0, "calibration": [], "loop_wall_s": 20.0, "last_issue_s": 0.0}
    run = f"{bench}-a"
    return finish_run(run_hash(run, bench, "accuracy"), records, info, tmp / run).to_json()


def performance(tmp: Path, bench: str, classes: int, seconds: list[float]) -> dict[str, Any]:
    """Five windows of 1000 inferences lasting ``seconds``."""
    rows = official_rows("ic01" if bench == "ic02" else bench)
    records = []
    for seq, s in enumerate(seconds):
        start = 1_000_000 + seq * 40_000_000
        records.append(
            Sample(
                seq=seq,
                index=seq,
                segment=None,
                window=seq,
                label=rows[seq].label,
                results=one_hot(0, classes),
                count=1000,
                warmup=10,
                start_us=start,
                end_us=start + round(s * 1e6),
                elapsed_us=round(s * 1e6),
                latency_us=s * 1000,
                wrapped=False,
                wall_s=s + 0.2,
            ).to_record()
        )
    info = {
        "count": 1000,
        "warmup": 10,
        "calibration": [],
        "loop_wall_s": 70.0,
        "last_issue_s": 0.0,
    }
    run = f"{bench}-p"
    return finish_run(run_hash(run, bench, "performance"), records, info, tmp / run).to_json()


def energy(tmp: Path) -> dict[str, Any]:
    """kws01's five energy windows of 11 s, k x 2**-15 J per 1 ms sample (k = 2, 5, 3, 1, 4)."""
    rows = official_rows("kws01")
    records = []
    for seq, k in enumerate([2, 5, 3, 1, 4]):
        samples = [IDLE_J] * 1000 + [k * UNIT_J] * 11000 + [IDLE_J] * 500
        record = Sample(
            seq=seq,
            index=seq,
            segment=None,
            window=seq,
            label=rows[seq].label,
            results=one_hot(0, 12),
            count=1000,
            warmup=10,
            wall_s=14.0,
            energy_j=11000 * k * UNIT_J,
            energy_window_s=11.0,
        ).to_record()
        records.append(
            {**record, "power_samples": samples, "power_events": [[8, 1000], [9, 12000]]}
        )
    run = "kws01-e"
    return finish_run(
        run_hash(run, "kws01", "energy"), records, {"count": 1000}, tmp / run
    ).to_json()


def sww(tmp: Path) -> dict[str, Any]:
    """sww01's stream of the official long file, the whole wav at 20 mW: 3 of its 50
    wakewords missed, 2 false detections."""
    record = stream_record(LONG, missed={4, 17, 33}, false_at_s=FALSE_AT)
    return scored_stream(tmp / "sww01-e", "sww01-e", record, board=BOARD).to_json()


def export(tmp_path_factory: pytest.TempPathFactory, summaries: dict[tuple[str, str], Any]) -> Path:
    """The closed v1.4 tree the export writes of ``summaries`` on one board, every run taken."""
    candidates = [
        Candidate(f"{b}-{m}", "sweep-1", BOARD, b, m, "completed", s)
        for (b, m), s in summaries.items()
    ]
    chosen, refused = select(candidates, "closed", "v1.4")
    assert refused == [] and len(chosen) == len(summaries)
    out = tmp_path_factory.mktemp("good")
    write_tree(Export("closed", "Org", "v1.4", chosen=chosen, systems={BOARD: SYSTEM}), out)
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed v1.4 tree: kws (accuracy, performance, energy), ic and ic2 (accuracy,
    performance) on one board, written by the export."""
    tmp = tmp_path_factory.mktemp("runs")
    summaries = {
        ("kws01", "accuracy"): accuracy(tmp, "kws01", 12, wrong=50),
        ("kws01", "performance"): performance(tmp, "kws01", 12, [12.5, 12.8, 12.0, 12.4, 12.6]),
        ("kws01", "energy"): energy(tmp),
        ("ic01", "accuracy"): accuracy(tmp, "ic01", 10, wrong=20),
        ("ic01", "performance"): performance(tmp, "ic01", 10, [11.0, 11.5, 10.5, 12.0, 11.2]),
        ("ic02", "accuracy"): accuracy(tmp, "ic02", 10, wrong=10),
        ("ic02", "performance"): performance(tmp, "ic02", 10, [13.0, 13.5, 13.2, 13.1, 13.4]),
    }
    return export(tmp_path_factory, summaries)


@pytest.fixture(scope="module")
def good_sww(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed v1.4 tree of sww's stream alone (it needs no other test), by the export."""
    return export(tmp_path_factory, {("sww01", "energy"): sww(tmp_path_factory.mktemp("runs"))})


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    """Replace ``old`` (a regular expression) in the file, ``count`` times exactly."""
    text, n = re.subn(old, new, path.read_text(), count=count, flags=re.MULTILINE)
    assert n == count, (path, old)
    path.write_text(text)


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


ORG = Path("closed/Org")
KWS = ORG / "results" / BOARD / "kws"
SWW = ORG / "results" / BOARD / "sww" / "energy"
SYSTEM_JSON = ORG / "systems" / f"{BOARD}.json"


def _big_file(root: Path) -> None:
    with (root / ORG / "code" / "firmware.bin").open("wb") as f:
        f.truncate(500 * 1024 * 1024 + 1)  # sparse: no disk used


def _drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda doc: {k: v for k, v in doc.items() if k != key}


def edit_detections(path: Path, change: Callable[[list[int]], list[int]]) -> None:
    """Change the stream's detection log in results.json, as text: the file holds the whole
    1,200 s power trace, which a JSON round trip would spend seconds on."""
    text = path.read_text()
    found = re.search(r'"detections": \[([^\]]*)\]', text)
    assert found is not None
    log = change([int(v) for v in found.group(1).split(",")])
    path.write_text(text[: found.start(1)] + ", ".join(map(str, log)) + text[found.end(1) :])


def _more_false_positives(root: Path, division: str = "closed") -> None:
    """Seven more false detections, 2.5 s after windows 10 to 16 end, in the log and the
    printed counts alike: 9 in all."""
    folder = root / division / SWW.relative_to("closed")
    extra = [round((LONG.windows[k][1] + 2.5) * 1000) for k in range(10, 17)]
    edit_detections(folder / "results.json", lambda log: sorted(log + [log[0] + d for d in extra]))
    edit(folder / "results.txt", "2 False positives", "9 False positives")


#: Per rule, how to break it in the good tree.
BREAK: dict[str, Callable[[Path], None]] = {
    "division": lambda r: (r / "network").mkdir(),
    "results-folder": lambda r: shutil.copytree(r / ORG / "systems", r / "closed/Other/systems"),
    "code-folder": lambda r: shutil.rmtree(r / ORG / "code"),
    "symlink": lambda r: os.symlink("README.md", r / ORG / "code" / "link.md"),
    "file-size": _big_file,
    "pycache": lambda r: (
        (r / ORG / "code" / "__pycache__").mkdir()
        or (r / ORG / "code" / "__pycache__" / "x.pyc").write_bytes(b"x")
    ),
    "empty-folder": lambda r: (r / ORG / "code" / "sources").mkdir(),
    "name": lambda r: (r / ORG / "code" / "build notes.txt").write_text("x"),
    "system-file": lambda r: (r / SYSTEM_JSON).rename(r / SYSTEM_JSON.with_name("board-2.json")),
    "system-status": lambda r: edit_json(r / SYSTEM_JSON, lambda d: {**d, "Status": "beta"}),
    "system-type": lambda r: edit_json(r / SYSTEM_JSON, lambda d: {**d, "system_type": "edge"}),
    "system-keys": lambda r: edit_json(r / SYSTEM_JSON, _drop("Accelerator")),
    "model-name": lambda r: (r / KWS).rename(r / KWS.with_name("keyword_spotting")),
    "ic2-needs-ic": lambda r: shutil.rmtree(r / KWS.with_name("ic")),
    "mode-folders": lambda r: shutil.copytree(r / KWS / "performance", r / KWS / "latency"),
    "required-modes": lambda r: shutil.rmtree(r / KWS / "performance"),
    "file-list": lambda r: (r / KWS / "accuracy" / "samples.jsonl").write_text("{}\n"),
    "accuracy-line": lambda r: edit(r / KWS / "accuracy/results.txt", "Top 1% = ", "Top1 "),
    "accuracy-target": lambda r: edit(r / KWS / "accuracy/results.txt", r"= 95\.0$", "= 89.9"),
    "samples": lambda r: edit_json(r / KWS / "accuracy/results.json", lambda d: d[:-1]),
    "performance-line": lambda r: edit(
        r / KWS / "performance/results.txt", r"^\d{4}\.\d{6} (ulp-mlperf: Median)", r"\1"
    ),
    "performance-windows": lambda r: edit(
        r / KWS / "performance/results.txt",
        r"Runtime: 12\.0 sec\.\n.*\n    Runtime requirements have been met\.",
        "Runtime: 9.5 sec.\n    Throughput: 105.26315789473684 inf./sec.",
    ),
    "performance-median": lambda r: edit(
        r / KWS / "performance/results.txt", r"is     80\.000 inf", "is     80.645 inf"
    ),
    "energy-line": lambda r: edit(r / KWS / "energy/results.txt", r"^Median energy cost.*$", ""),
    "energy-trials": lambda r: edit(
        r / KWS / "energy/results.txt", r"(Elapsed time  : 11\.0)$", r"\1  <<<< below minimum"
    ),
    "energy-median": lambda r: edit(
        r / KWS / "energy/results.txt", r"cost is 1007\.0801", "cost is 671.3867"
    ),
    "subset-note": lambda r: (
        (r / KWS / "accuracy" / "results.txt")
        .open("a")
        .write("1207.031500 ulp-mlperf: subset run (--limit 10): NOT VALID FOR SUBMISSION\n")
    ),
    "model-mapping": lambda r: (r / ORG / "model_mapping.json").write_text('{"ds": "kws"}'),
    "sww-lines": lambda r: edit(r / SWW / "results.txt", r"^Average duty cycle: .*\n", ""),
    "sww-wakewords": lambda r: edit(
        r / SWW / "results.txt", "47 True positives", "46 True positives"
    ),
    "sww-target": _more_false_positives,
    "sww-stream": lambda r: edit_detections(r / SWW / "results.json", lambda log: log[:-1]),
    "sww-power": lambda r: edit(
        r / SWW / "results.txt", r"Elapsed time  : 1200\.25$", "Elapsed time  : 12.0"
    ),
}


def test_the_exported_tree_passes_every_rule(good: Path) -> None:
    assert check_tree(good, "v1.4") == []
    # The same tree under v1.3 rules: ic2 is not a v1.3 model.
    [finding] = check_tree(good, "v1.3")
    assert (finding.rule, finding.path) == ("model-name", f"closed/Org/results/{BOARD}/ic2")


def test_the_exported_sww_tree_passes_every_rule(good_sww: Path) -> None:
    assert sorted(p.name for p in (good_sww / SWW).iterdir()) == [
        "energy_inf_000.png",
        "log.txt",
        "results.json",
        "results.txt",
    ]
    assert check_tree(good_sww, "v1.4") == [] and check_tree(good_sww, "v1.3") == []


def test_every_rule_has_a_breaking_case() -> None:
    assert set(BREAK) == set(RULES)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_broken_rule_fails_the_tree(
    request: pytest.FixtureRequest, tmp_path: Path, rule: str
) -> None:
    tree = tmp_path / "tree"
    good = request.getfixturevalue("good_sww" if rule.startswith("sww-") else "good")
    shutil.copytree(good, tree, symlinks=True)
    BREAK[rule](tree)
    findings = check_tree(tree, "v1.4")
    assert findings, f"{rule} not found"
    assert {f.rule for f in findings} == {rule}, [str(f) for f in findings]


#: The general rules as an sww folder breaks them.
SWW_BREAK: dict[str, Callable[[Path], object]] = {
    "file-list": lambda r: (r / SWW / "energy_inf_000.png").unlink(),
    "mode-folders": lambda r: shutil.copytree(r / SWW, r / SWW.with_name("performance")),
    "subset-note": lambda r: (
        (r / SWW / "results.txt").open("a").write("subset run: NOT VALID FOR SUBMISSION\n")
    ),
}


@pytest.mark.parametrize("rule", sorted(SWW_BREAK))
def test_a_broken_sww_folder_fails_the_tree(good_sww: Path, tmp_path: Path, rule: str) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(good_sww, tree)
    SWW_BREAK[rule](tree)
    assert {f.rule for f in check_tree(tree, "v1.4")} == {rule}


def test_open_division_reports_accuracy_below_the_closed_target(good: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(good / "closed", tree / "open")
    edit(tree / "open/Org/results" / BOARD / "kws/accuracy/results.txt", r"= 95\.0$", "= 89.9")
    assert check_tree(tree, "v1.4") == []


def test_open_division_reports_sww_beyond_the_closed_limits(good_sww: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(good_sww / "closed", tree / "open")
    _more_false_positives(tree, "open")
    assert check_tree(tree, "v1.4") == []
