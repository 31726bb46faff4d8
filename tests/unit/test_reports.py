"""``controller.reports``' tables, Markdown, CSV, page and plots on known data: a sweep
document as ``farm show`` reads it and verdicts as ``farm compare`` makes them, built here by
hand, so every number in the output is known."""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from controller.compare import Comparison, StoredRun, SweepInfo
from controller.render import to_csv, to_markdown
from controller.reports import plots
from controller.reports.data import (
    Bar,
    EnergyRun,
    EnergyWindow,
    HistoryPoint,
    LatencyRuns,
    ReportData,
    Strip,
    _energy_run,
)
from controller.reports.page import Plot, Section, data_uri, page, table_html
from controller.reports.tables import listings, results_page
from controller.reports.writer import summary_line
from farm.scoring.compare import METRICS, IdentityChange, MetricVerdict, RunVerdicts
from tests.integration.report_data import SYSTEMS as BOARD_SYSTEMS

METRIC = {m.key: m for m in METRICS}
#: b-one as the integration tests' boards describe it; b-two says less.
SYSTEMS = {
    "b-one": BOARD_SYSTEMS["b-one"],
    "b-two": {"board_name": "Nucleo-U575ZI", "processor_name": "Arm Cortex-M33"},
}


def run(
    board: str, benchmark: str, mode: str, state: str = "completed", **summary: Any
) -> dict[str, Any]:
    """A run of ``farm show``'s document (controller.sweep_view.sweep_report)."""
    full = {"valid": True, "problems": [], **summary}
    return {
        "id": f"{board}-{benchmark}-{mode}",
        "board": board,
        "agent": "pi-a",
        "benchmark": benchmark,
        "mode": mode,
        "state": state,
        "reason": None if state == "completed" else "board offline",
        "attempts": 1,
        "summary": full if state == "completed" else None,
        "firmware": {"image": f"{benchmark}.bin", "sha256": "ab" * 32, "software": "0.1.0"},
    }


#: b-one: kws01 performance 250 inf./s (4.000 ms), accuracy 90.5 %, energy 1007.080078125
#: µJ; ad01 AUC 0.875 and a performance run of 40 inf./s (25 ms) that is not valid. b-two:
#: kws01 at 242.71844660194174 inf./s (4.120 ms) and a latency run; its vww01 run failed.
SWEEP = {
    "sweep": {
        "id": "sw-9",
        "label": "nightly",
        "created": 1000.0,
        "state": "finished",
        "spec": {},
        "total": 8,
        "skipped": [],
    },
    "runs": [
        run("b-one", "kws01", "performance", throughput_ips=250.0, latency_ms=4.0),
        run("b-one", "kws01", "accuracy", top1=90.5, target=90.0, target_met=True),
        run("b-one", "kws01", "energy", energy_uj=1007.080078125),
        run("b-one", "ad01", "accuracy", auc=0.875, target=0.85, target_met=True),
        run(
            "b-one",
            "ad01",
            "performance",
            throughput_ips=40.0,
            latency_ms=25.0,
            valid=False,
            problems=["window 3 lasted 9.2 s"],
        ),
        run("b-two", "kws01", "performance", throughput_ips=242.71844660194174),
        run("b-two", "kws01", "latency", p50_us=4120, p90_us=4217, p90_early_stop_us=4251),
        run("b-two", "vww01", "performance", state="failed"),
    ],
    "boards": {},
}

WORSE = MetricVerdict(
    metric="throughput_ips",
    unit="inf./s",
    verdict="worse",
    baseline=250.0,
    current=242.71844660194174,
    change=-7.281553398058258,
    change_pct=-2.912621359223303,
    noise=0.8838834764831844,
    threshold=3.5355339059327378,
    history=3,
)
SAME = MetricVerdict("top1", "%", "same", 90.5, 90.5, 0.0, 0.0, 0.0, 0.0)
COMPARISON = Comparison(
    SweepInfo("sw-9", "nightly", 1000.0, "finished"),
    (SweepInfo("sw-8", "nightly", 900.0, "finished"),),
    (SweepInfo("sw-8", "nightly", 900.0, "finished"),),
    (
        RunVerdicts("b-one", "kws01", "accuracy", (SAME,)),
        RunVerdicts(
            "b-two",
            "kws01",
            "performance",
            (WORSE,),
            changed=(IdentityChange("firmware_sha256", "firmware image", "aaa", "bbb"),),
        ),
    ),
)


def data(comparison: Comparison | None = COMPARISON) -> ReportData:
    return ReportData(
        SWEEP,
        SYSTEMS,
        "nightly",
        comparison=comparison,
        no_verdicts=None if comparison else "no finished sweep labelled 'nightly' before sw-9",
    )


def test_the_results_page_has_a_row_per_system_with_the_sweeps_numbers() -> None:
    listing = results_page(data())
    assert [c.key for c in listing.columns] == [
        "system",
        "device",
        "processor",
        "accelerator",
        "software",
        "kws01_latency_ms",
        "kws01_energy_uj",
        "kws01_accuracy",
        "ad01_latency_ms",
        "ad01_energy_uj",
        "ad01_accuracy",
    ]
    one, two = listing.rows
    assert (one["system"], one["device"], one["software"]) == (
        "b-one",
        "Nucleo-L4R5ZI",
        "TFLite Micro",
    )
    assert one["kws01_latency_ms"] == 4.0 and one["kws01_accuracy"] == 90.5
    assert one["kws01_energy_uj"] == 1007.080078125
    assert one["ad01_latency_ms"] == 25.0 and one["ad01_accuracy"] == 0.875
    assert one["ad01_energy_uj"] is None
    assert two["kws01_latency_ms"] == 1000 / 242.71844660194174
    assert two["kws01_accuracy"] is None and two["software"] == ""
    assert "ad01_latency_ms" not in two  # no ad01 run on b-two: the cell prints "-"
    # The failed vww01 run has no column; the ad01 run that is not valid is named.
    assert listing.notes[1] == "not valid (the details say why): b-one ad01 performance"


def test_results_page_markdown_and_csv() -> None:
    listing = results_page(data())
    assert to_markdown(listing).splitlines()[:6] == [
        "**sweep sw-9 nightly (finished)**",
        "",
        "| system | device | processor | accelerator | software | kws ms | kws µJ "
        "| kws top-1 % | ad ms | ad µJ | ad AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| b-one | Nucleo-L4R5ZI | Arm Cortex-M4 | none | TFLite Micro | 4.000 | 1007.1 "
        "| 90.5 | 25.000 | - | 0.875 |",
        "| b-two | Nucleo-U575ZI | Arm Cortex-M33 | - | - | 4.120 | - | - | - | - | - |",
    ]
    rows = list(csv.DictReader(io.StringIO(to_csv(listing))))
    assert rows[0]["kws01_energy_uj"] == "1007.080078125"
    assert rows[1]["kws01_latency_ms"] == str(1000 / 242.71844660194174)
    assert rows[1]["ad01_accuracy"] == ""


def test_the_tables_without_and_with_verdicts() -> None:
    assert list(listings(data(None))) == ["results", "details", "firmware"]
    tables = listings(data())
    assert list(tables) == ["results", "verdicts", "details", "firmware"]
    rows = {
        (r["board"], r["metric"]): r
        for r in csv.DictReader(io.StringIO(to_csv(tables["verdicts"])))
    }
    worse = rows[("b-two", "throughput_ips")]
    assert worse["verdict"] == "worse" and worse["what_changed"] == "firmware image aaa -> bbb"
    assert float(worse["change_pct"]) == -2.912621359223303
    assert float(worse["threshold"]) == 3.5355339059327378
    assert rows[("b-one", "top1")]["verdict"] == "same"
    details = {
        (r["system"], r["benchmark"]): r
        for r in csv.DictReader(io.StringIO(to_csv(tables["details"])))
    }
    assert details[("b-two", "vww01")]["notes"] == "performance: failed (board offline)"
    assert details[("b-two", "kws01")]["p90_us"] == "4217"


def test_summary_line() -> None:
    assert summary_line(data()) == (
        "sweep sw-9 (nightly, finished): 7 completed, 1 failed; against sw-8: REGRESSED "
        "(1 worse, 1 same)"
    )
    assert summary_line(data(None)) == (
        "sweep sw-9 (nightly, finished): 7 completed, 1 failed; no verdicts"
    )


def test_bars_are_the_verdicts_numbers_or_the_sweeps_alone() -> None:
    assert data().bars("b-two") == [
        Bar("kws01", METRIC["throughput_ips"], 242.71844660194174, 250.0, "worse")
    ]
    alone = data(None).bars("b-one")
    assert [(b.benchmark, b.metric.key, b.current, b.baseline) for b in alone] == [
        ("ad01", "auc", 0.875, None),
        ("ad01", "throughput_ips", 40.0, None),
        ("kws01", "top1", 90.5, None),
        ("kws01", "energy_uj", 1007.080078125, None),
        ("kws01", "throughput_ips", 250.0, None),
    ]


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of every ``td``."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: list[tuple[dict[str, str | None], str]] = []
        self._cell: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "td":
            self._cell = dict(attrs)

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self.cells.append((self._cell, data))
            self._cell = None


def test_table_html_marks_columns_and_verdicts() -> None:
    parsed = Tags()
    parsed.feed(table_html(listings(data())["verdicts"], "verdicts-0"))
    verdicts = [(a.get("class"), text) for a, text in parsed.cells if a["data-col"] == "verdict"]
    assert verdicts == [("v-same", "same"), ("v-worse", "worse")]
    changes = [text for a, text in parsed.cells if a["data-col"] == "change_pct"]
    assert changes == ["+0.00", "-2.91"]
    assert ("table", {"id": "table-verdicts-0"}) in parsed.tags


def decoded(png: bytes) -> tuple[int, int]:
    """The PNG's size, after Pillow decoded every pixel of it."""
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_every_plot_is_a_png_of_its_size() -> None:
    latency = LatencyRuns("b-two", "kws01", tuple(range(4000, 4300)), tuple(range(3900, 4200)))
    assert decoded(plots.latency_figure(latency)) == (900, 306)
    assert decoded(plots.latency_figure(LatencyRuns("b", "kws01", (5,) * 10))) == (900, 306)
    assert decoded(plots.bars_figure("b-two", data().bars("b-two"))) == (306, 324)
    # Four panels: throughput, energy, top-1 (kws01) and AUC (ad01).
    assert decoded(plots.bars_figure("b-one", data(None).bars("b-one"))) == (1224, 324)
    window = EnergyWindow((1.0,) * 100 + (90.0,) * 800 + (1.0,) * 100, 100, 900, 1000, 72.0)
    broken = EnergyWindow((1.0,) * 500, 0, 0, 1000, None)  # events that delimit nothing
    energy = EnergyRun("b-one", "kws01", "r", (window, broken), 72.0)
    assert decoded(plots.energy_figure(energy)) == (900, 306)
    points = tuple(HistoryPoint(f"sw-{i}", 1000.0 + 86400 * i, 250.0 + i) for i in range(5))
    strips = [Strip(f"b-{i}", "kws01", METRIC["throughput_ips"], points) for i in range(13)]
    figures = plots.history_figures("throughput_ips", strips)
    assert [decoded(f) for f in figures] == [(900, 1233), (900, 144)]


def test_the_page_is_self_contained() -> None:
    png = plots.bars_figure("b-two", data().bars("b-two"))
    section = Section("bars", "Bars <b>", ["a < b"], [results_page(data())], [Plot("x", png)])
    text = page(
        "report <sw-9>",
        "summary",
        regressed=True,
        why=None,
        sections=[section],
        files=["report.md", "results.csv"],
    )
    parsed = Tags()
    parsed.feed(text)
    images = [a["src"] for tag, a in parsed.tags if tag == "img"]
    assert images == [data_uri(png)]
    links = [a["href"] for tag, a in parsed.tags if tag == "a"]
    assert links == ["#bars", "report.md", "results.csv"]
    assert not [a for tag, a in parsed.tags if tag in ("script", "iframe", "object")]
    assert [a["href"] for tag, a in parsed.tags if tag == "link"] == ["data:,"]
    assert "report &lt;sw-9&gt;" in text and "Bars &lt;b&gt;" in text
    assert ("p", {"class": "summary regressed", "id": "summary"}) in parsed.tags


@pytest.mark.parametrize("regressed, mood", [(True, "regressed"), (False, "clean"), (None, "")])
def test_the_summary_says_whether_anything_regressed(regressed: bool | None, mood: str) -> None:
    text = page("t", "s", regressed=regressed, why="why", sections=[], files=[])
    assert f'<p class="summary {mood}" id="summary">s</p>' in text
    assert '<p class="why" id="no-verdicts">why</p>' in text


@pytest.mark.parametrize(
    ("text", "note"),
    [
        ('[{"power": {"samples": [1e-05]', "results.json unreadable: JSONDecodeError"),
        ('[{"power": {"samples": ["x"]}}]', "results.json unreadable: ValueError"),
        (
            '[{"power": {"samples": [], "timestamps": [[1]]}}]',
            "results.json unreadable: ValueError",
        ),
        ('[{"power": 3}, 7]', "results.json holds no power trace"),
    ],
)
def test_an_unreadable_results_json_costs_its_plot_not_the_report(
    tmp_path: Path, text: str, note: str
) -> None:
    (tmp_path / "results.json").write_text(text)
    run = StoredRun("r1", "b1", "kws01", "energy", {"energy_uj": 150.0}, {}, str(tmp_path))
    energy = _energy_run(run)
    assert (energy.windows, energy.median_uj, energy.note) == ((), 150.0, note)


def test_the_results_page_shows_sww_from_its_stream() -> None:
    # One energy stream gives sww01's three numbers: latency from the estimated throughput,
    # the power in mW (no energy per inference) and the F1 score.
    stream = run(
        "b-one",
        "sww01",
        "energy",
        throughput_ips=55.71,
        power_mw=20.0,
        f1=94 / 99,
        true_positives=47,
        false_negatives=3,
        false_positives=2,
    )
    sweep = {**SWEEP, "runs": [stream]}
    listing = results_page(ReportData(sweep, SYSTEMS, "nightly", comparison=None))
    assert [c.key for c in listing.columns][-3:] == [
        "sww01_latency_ms",
        "sww01_power_mw",
        "sww01_accuracy",
    ]
    assert [c.heading for c in listing.columns][-3:] == ["sww ms", "sww mW", "sww F1"]
    (row,) = [r for r in listing.rows if r["system"] == "b-one"]
    assert row["sww01_latency_ms"] == 1000 / 55.71
    assert row["sww01_power_mw"] == 20.0 and row["sww01_accuracy"] == 94 / 99
    assert "sww01, from its one stream: latency 1000 / the estimated" in listing.notes[0]
