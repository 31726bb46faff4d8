"""The nightly loop on simulated boards, every part real (tests/integration/controller_lab.py):
two nights submitted as the nightly unit submits them (``farm submit ... --verdict``), the
second with a new firmware image on a board whose simulated inference is 3 % slower. Each
finished sweep is judged by one job a real RQ worker runs (``controller.jobs.judge_sweep``);
the first night has no baseline, the second is worse on that board's latency with the image
as the cause; `farm controller exporter` serves the verdicts the alert and the dashboard
read; `farm sweeps` and `farm show` say the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from controller import keys
from controller.verdicts import VerdictRecord, load
from tests.integration.controller_lab import ControllerLab
from tests.integration.farm_procs import Proc, fetch, free_port, wait_until
from tests.integration.test_compare_sims import AGENT, OPTIONS, boards_yaml, restart_boards, start

REPORT_URL = "https://lab.example/reports/{sweep}/index.html?night={label}"
IMAGE = "kws01-performance.bin"


async def night(lab: ControllerLab) -> str:
    """One night's sweep (latency mode: short), waited for; its id."""
    _, out, _ = await lab.farm(
        "submit", "--benchmark", "kws", "--mode", "latency", "--label", "nightly",
        "--options", OPTIONS, "--verdict", "--wait", "--json",
    )  # fmt: skip
    return str(json.loads(out)["sweep"])


async def judged(lab: ControllerLab, sweep_id: str) -> VerdictRecord:
    """The sweep's verdict, once its judge job has stored it."""

    def stored() -> bool:
        return lab.redis.hget(keys.sweep(sweep_id), "verdict") not in (None, "queued")

    await wait_until(stored, 60, f"the verdict of {sweep_id}\n{lab.logs()}")
    record = load(lab.redis, sweep_id)
    assert record is not None
    return record


def logged(lab: ControllerLab, event: str, sweep_id: str) -> int:
    """How many times the workers logged ``event`` for the sweep."""
    return sum(
        f"event={event} sweep={sweep_id} " in line
        for log in lab.dir.glob("worker*.log")
        for line in log.read_text(errors="replace").splitlines()
    )


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = fetch(f"http://127.0.0.1:{port}/metrics")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labelled(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def assert_report(record: VerdictRecord) -> None:
    """The report was written where the record says, and linked with the lab's URL."""
    assert record.report_error == "", record
    assert record.report_url == REPORT_URL.format(sweep=record.sweep, label="nightly")
    assert record.report.endswith(f"/{record.sweep}/index.html"), record
    page = Path(record.report).read_text()
    assert record.sweep in page and "<img" in page


async def test_two_nights_judged_once_each_exported_with_the_regression_and_its_cause(
    lab: ControllerLab,
) -> None:
    lab.extra_env["FARM_REPORT_URL"] = REPORT_URL
    ids = await start(lab, boards_yaml())
    port = free_port()
    exporter = Proc(
        ["--log-level", "info", "controller", "exporter", "--port", str(port)],
        lab.dir / "exporter.log",
        env=lab.env,
    )
    await exporter.start()
    try:
        first = await night(lab)
        record = await judged(lab, first)
        assert record.state == "no baseline" and record.rows == (), record
        assert record.label == "nightly" and record.regressions == 0
        assert_report(record)

        # The injected night: a new firmware build whose inference is 3 % slower on b-slow.
        await restart_boards(lab, boards_yaml(slower=1.03), 2, ids)
        image = lab.dir / f"sim-{AGENT}-2" / "firmware" / IMAGE
        old_image = image.read_text()
        image.write_text(old_image + "release=2\n")  # still a valid image, another digest
        second = await night(lab)
        record = await judged(lab, second)
        assert record.state == "judged" and record.baseline == (first,), record
        found = {(r.board, r.metric): r for r in record.rows}
        assert {board for board, _ in found} == {"b-slow", "b-acc", "b-same"}
        worse = sorted(key for key, r in found.items() if r.verdict == "worse")
        assert worse == [("b-slow", "p90_early_stop_us"), ("b-slow", "p90_us")], found
        assert {r.verdict for key, r in found.items() if key not in worse} == {"same"}
        p90 = found[("b-slow", "p90_us")]
        assert 2.7 <= (p90.change_pct or 0) <= 3.3, p90
        # Every board runs the new image: the cause is recorded for each, the verdict
        # differs only where the inference got slower.
        causes = {r.cause for r in record.rows}
        (cause,) = causes
        assert cause.startswith("firmware image ") and " -> " in cause, causes
        before, after = cause.removeprefix("firmware image ").split(" -> ")
        assert before != after
        assert record.regressions == 2
        assert_report(record)

        # Each sweep was finished and judged exactly once, though its runs (one per board,
        # on as many workers) end within milliseconds of each other.
        for sweep_id in (first, second):
            assert logged(lab, "sweep_finished", sweep_id) == 1, lab.logs()
            assert logged(lab, "sweep_judged", sweep_id) == 1, lab.logs()

        # The exporter serves the latest judged night.
        def scraped() -> dict[Any, float] | None:
            values = metrics(port)
            regressions = values.get(("farm_sweep_regressions", labelled(label="nightly")))
            return values if regressions == 2 else None

        values = await wait_until(scraped, 30, "the exporter serving the second night")
        slow = {"label": "nightly", "board": "b-slow", "benchmark": "kws01", "mode": "latency"}
        assert values[("farm_verdict", labelled(**slow, metric="p90_us"))] == -1
        assert values[("farm_verdict", labelled(**slow, metric="p90_early_stop_us"))] == -1
        same = {**slow, "board": "b-same"}
        assert values[("farm_verdict", labelled(**same, metric="p90_us"))] == 0
        ratio = values[("farm_verdict_change_ratio", labelled(**slow, metric="p90_us"))]
        assert ratio == (p90.change_pct or 0) / 100
        info = labelled(
            label="nightly",
            state="judged",
            sweep=second,
            baseline=first,
            report_url=record.report_url,
        )
        assert values[("farm_sweep_verdict_info", info)] == 1

        # The client commands say it.
        _, out, _ = await lab.farm("sweeps", "--json")
        verdicts = {s["id"]: s.get("verdict") for s in json.loads(out)}
        assert verdicts == {first: "no baseline", second: "REGRESSED: 2 worse, 4 same"}
        _, out, _ = await lab.farm("show", second, "--format", "markdown")
        assert "verdict: REGRESSED: 2 worse, 4 same" in out
    finally:
        await exporter.stop()
