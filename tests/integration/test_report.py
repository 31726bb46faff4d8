"""``farm report`` on nightly sweeps stored in a real Redis the way the controller stores them,
their run folders written by the worker's own code (tests/integration/report_data.py): the
files it writes, the page's images and tables against the known numbers, the first night
without verdicts, bad input; and (slow) the page in a real headless Chromium."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import redis
from PIL import Image

from controller.compare import Baseline
from controller.reports import write_report
from controller.reports.data import gather
from tests.integration.controller_lab import REDIS_URL
from tests.integration.farm_procs import farm_command
from tests.integration.report_data import (
    ENERGY_START,
    ENERGY_STOP,
    ENERGY_TOTAL,
    IDLE_J,
    UJ_PER_K,
    UNIT_J,
    Night,
    latencies,
    store_night,
)

#: The regressed night: b-two 3 % slower, 5 % more energy, one more sample wrong (row 904),
#: its latency 3 % longer, on a new firmware image; b-one as every night.
SLOWER = 1.03
REGRESSED = Night(
    throughput=250 / SLOWER,
    energy_k=3 * 1.05,
    correct=904,
    latency_us=4000 * SLOWER,
    firmware="b" * 64,
)
#: Small night-to-night wobble of the earlier nights (well inside the noise floor).
WOBBLE = (1.0, 1.001, 0.999)
DAY = 86400.0
T0 = 1_765_000_000.0
#: Plots of the regressed night: a bar chart per board, latency and energy per board ×
#: benchmark, a history figure per metric (throughput, energy, top-1, p90, ES p90).
PLOTS = 2 + 2 + 2 + 5


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """Three ordinary nights sw-0..sw-2, then sw-3 with b-two regressed, stored once for the
    module (a report only reads them); the client of their database."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    results = tmp_path_factory.mktemp("results")
    for n, wobble in enumerate(WOBBLE):
        boards = {
            b: Night(throughput=250 * wobble, energy_k=3 / wobble) for b in ("b-one", "b-two")
        }
        store_night(client, results, f"sw-{n}", T0 + n * DAY, boards, seed=10 * n)
    store_night(
        client, results, "sw-3", T0 + 3 * DAY, {"b-one": Night(), "b-two": REGRESSED}, seed=30
    )
    yield client
    client.flushdb()


class Page(HTMLParser):
    """The page as data: its images' sources, its tables (id -> rows, each a dict of the
    cells' ``data-col`` -> text, with the verdict cells' class), the paragraphs by id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.ids: dict[str, str] = {}
        self._table: str | None = None
        self._cell: str | None = None
        self._text: list[str] = []
        self._id: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.images.append(found["src"] or "")
        elif tag == "table":
            self._table = found["id"]
            self.tables[self._table or ""] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append({})
        elif tag == "td":
            self._cell, self._text = found["data-col"], []
            if found.get("class", "") and "v-" in (found["class"] or ""):
                self.tables[self._table or ""][-1]["class"] = found["class"] or ""
        elif tag == "p" and found.get("id"):
            self._id, self._text = found["id"], []

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.tables[self._table or ""][-1][self._cell] = "".join(self._text)
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "p" and self._id is not None:
            self.ids[self._id] = "".join(self._text)
            self._id = None

    def rows(self, table: str) -> list[dict[str, str]]:
        """The table's body rows (the heading row has no cells)."""
        return [r for r in self.tables[table] if r]


def png_size(uri: str) -> tuple[int, int]:
    """The size of a ``data:image/png;base64,`` image after decoding every pixel."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    with Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :], validate=True))) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


async def report(*args: str) -> tuple[int, str, str]:
    return await farm_command(["report", *args], {"FARM_REDIS_URL": REDIS_URL}, 120)


async def test_the_report_of_a_regressed_night(nights: redis.Redis, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code, stdout, errs = await report(
        "sw-3", "--against", "nightly", "--last", "2", "--out", str(out)
    )
    # A regression is compare's exit status, never the report's.
    assert code == 0, errs
    assert stdout == f"{out / 'index.html'}\n"
    assert sorted(p.name for p in out.iterdir()) == [
        "details.csv",
        "firmware.csv",
        "index.html",
        "report.md",
        "results.csv",
        "verdicts.csv",
    ]
    page = Page((out / "index.html").read_text())
    assert len(page.images) == PLOTS
    for uri in page.images:
        width, height = png_size(uri)
        assert width > 100 and height > 100
    assert "against sw-1, sw-2: REGRESSED (5 worse, 5 same)" in page.ids["summary"]

    verdicts = {(r["board"], r["metric"]): r for r in page.rows("table-verdicts-0")}
    assert len(verdicts) == 10
    fw = f"firmware image {'a' * 64} -> {'b' * 64}"
    for metric in ("throughput_ips", "energy_uj", "top1", "p90_us", "p90_early_stop_us"):
        worse, same = verdicts[("b-two", metric)], verdicts[("b-one", metric)]
        assert (worse["verdict"], worse["class"], worse["what_changed"]) == (
            "worse",
            "v-worse",
            fw,
        )
        assert (same["verdict"], same["what_changed"]) == ("same", "nothing recorded")
    # The baseline is the median (the mean, of two) of sw-1 and sw-2: 250 x 1.001 and
    # 250 x 0.999 inf./s give 250, -2.91 % = 1 / 1.03 - 1; k = 3 / 1.001 and 3 / 0.999 give
    # 3 x 1.000001, and 3.15 k is +5.00 % of that.
    assert verdicts[("b-two", "throughput_ips")]["change_pct"] == "-2.91"
    assert verdicts[("b-two", "throughput_ips")]["current"] == "242.718"
    assert verdicts[("b-two", "energy_uj")]["change_pct"] == "+5.00"
    assert verdicts[("b-two", "top1")]["samples_text"] == "904"
    assert verdicts[("b-two", "top1")]["change_pct"] == "-0.11"  # 90.4 against 90.5

    results = {r["system"]: r for r in page.rows("table-results-0")}
    assert {k: results["b-one"][k] for k in ("device", "software")} == {
        "device": "Nucleo-L4R5ZI",
        "software": "TFLite Micro",
    }
    # 3000 inferences in 12.000 s (b-two: 12.360 s), 3 (3.15) x 335.693359375 µJ, 905
    # (904) of 1000 right.
    assert [results["b-one"][f"kws01_{k}"] for k in ("latency_ms", "energy_uj", "accuracy")] == [
        "4.000",
        "1007.1",
        "90.5",
    ]
    assert [results["b-two"][f"kws01_{k}"] for k in ("latency_ms", "energy_uj", "accuracy")] == [
        "4.120",
        "1057.4",
        "90.4",
    ]

    rows = {r["system"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert float(rows["b-two"]["kws01_latency_ms"]) == pytest.approx(12.36 / 3, rel=1e-12)
    assert float(rows["b-two"]["kws01_energy_uj"]) == pytest.approx(3.15 * UJ_PER_K, rel=1e-12)
    assert float(rows["b-one"]["kws01_accuracy"]) == 90.5
    csv_verdicts = list(csv.DictReader((out / "verdicts.csv").open()))
    assert {(r["board"], r["metric"]): r["verdict"] for r in csv_verdicts} == {
        k: v["verdict"] for k, v in verdicts.items()
    }
    markdown = (out / "report.md").read_text()
    assert (
        "| b-two | Nucleo-U575ZI | Arm Cortex-M33 | none | X-CUBE-AI | 4.120 | 1057.4 | 90.4 |"
        in (markdown)
    )
    assert "| b-two | kws01 | accuracy | top1 | worse | 90.5 | 90.4 | -0.11 |" in markdown


def test_what_the_plots_are_drawn_from(nights: redis.Redis) -> None:
    data = gather(nights, "sw-3", Baseline(label="nightly", last=2), history=20)
    assert data.label == "nightly" and data.no_verdicts is None
    # Energy: each window of results.json, delimited by its last two events, at k x 2**-15 J
    # per millisecond sample: 3.15 x 2**-15 J in 1 ms is 96.13037109375 mW.
    energy = {r.board: r for r in data.energy}
    assert len(energy["b-two"].windows) == 5
    for window in energy["b-two"].windows:
        assert (window.start, window.stop, window.inferences) == (ENERGY_START, ENERGY_STOP, 1000)
        assert window.uj_per_inference == pytest.approx(3.15 * UJ_PER_K, rel=1e-12)
        assert len(window.power_mw) == ENERGY_TOTAL
        assert window.power_mw[ENERGY_START] == pytest.approx(3.15 * UNIT_J * 1e6, rel=1e-12)
        assert window.power_mw[0] == IDLE_J * 1e6
    assert energy["b-one"].median_uj == pytest.approx(3 * UJ_PER_K, rel=1e-12)
    # Latency: this sweep's queries and the newest baseline run's (sw-2), from samples.jsonl.
    latency = {r.board: r for r in data.latencies}
    assert latency["b-two"].current == tuple(latencies(REGRESSED.latency_us, 30 + 8))
    assert latency["b-two"].baseline_run == "sw-2-r07"
    assert latency["b-two"].baseline == tuple(latencies(Night().latency_us, 20 + 8))
    # History: every earlier nightly sweep, then this one.
    strips = {(s.board, s.metric.key): s for s in data.strips}
    assert len(strips) == 10
    throughput = strips[("b-two", "throughput_ips")].points
    assert [p.sweep for p in throughput] == ["sw-0", "sw-1", "sw-2", "sw-3"]
    assert [p.value for p in throughput] == pytest.approx([250, 250.25, 249.75, 250 / SLOWER])
    assert [(p.baseline, p.current) for p in throughput] == [
        (False, False),
        (True, False),
        (True, False),
        (False, True),
    ]
    assert [p.value for p in strips[("b-two", "top1")].points] == [90.5, 90.5, 90.5, 90.4]


async def test_the_first_night_has_no_verdicts_and_says_why(
    nights: redis.Redis, tmp_path: Path
) -> None:
    # The folder held another night's report (with verdicts) and a file of someone else's.
    out = tmp_path / "first"
    write_report(nights, "sw-3", out)
    assert (out / "verdicts.csv").is_file()
    (out / "notes.txt").write_text("mine\n")
    code, stdout, errs = await report("sw-0", "--out", str(out), "--format", "json")
    assert code == 0, errs
    written = json.loads(stdout)
    assert written["index"] == str(out / "index.html")
    assert written["files"] == [
        "details.csv",
        "firmware.csv",
        "index.html",
        "report.md",
        "results.csv",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted([*written["files"], "notes.txt"])
    # A 2-board sweep's report, matplotlib's import included, on a loaded 2-core machine.
    assert written["seconds"] < 20
    page = Page((out / "index.html").read_text())
    why = "No verdicts: no finished sweep labelled 'nightly' before sw-0 to compare with"
    assert page.ids["no-verdicts"].startswith(why)
    assert "table-verdicts-0" not in page.tables
    assert [r["kws01_latency_ms"] for r in page.rows("table-results-0")] == ["4.000", "4.000"]
    # Bars and history from this sweep alone; latency and energy as every night.
    assert len(page.images) == 2 + 2 + 2 + 5
    assert why in (out / "report.md").read_text()


async def test_bad_input_is_one_line_and_status_2(nights: redis.Redis, tmp_path: Path) -> None:
    out = tmp_path / "never"
    cases = {
        ("sw-x",): "no sweep 'sw-x'",
        ("sw-3", "sw-y"): "no baseline sweep 'sw-y'",
        ("sw-3", "sw-3"): "compared with itself",
        ("sw-3", "sw-2", "--against", "nightly"): "not both",
        ("sw-3", "--format", "csv"): "--format takes table or json",
    }
    for args, message in cases.items():
        code, stdout, errs = await report(*args, "--out", str(out))
        assert code == 2 and stdout == "", (args, stdout, errs)
        assert message in errs and len(errs.strip().splitlines()) == 1, errs
    assert not out.exists()


CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


class Recorder(SimpleHTTPRequestHandler):
    """Serves the report's folder and keeps every path asked for."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads :attr:`asked`."""


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium not installed (apt-get install chromium chromium-driver)",
)
async def test_the_page_renders_in_headless_chromium(nights: redis.Redis, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    out = tmp_path / "report"
    code, _, errs = await report("sw-3", "--against", "nightly", "--out", str(out))
    assert code == 0, errs
    # Served over HTTP, as a lab serves its reports: every request the page makes reaches
    # this server (a file:// page's would not show), and it must make none but the page.
    Recorder.asked = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Recorder, directory=str(out)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        state = browser.execute_script(
            "return {ready: document.readyState,"
            " images: Array.from(document.images).map(i => [i.complete, i.naturalWidth,"
            " i.naturalHeight]),"
            " fetched: performance.getEntriesByType('resource').map(e => e.name),"
            " tables: Object.fromEntries(Array.from(document.querySelectorAll('table'))"
            "   .map(t => [t.id, t.tBodies[0].rows.length])),"
            " worse: document.querySelectorAll('td.v-worse').length,"
            " summary: document.getElementById('summary').textContent}"
        )
    finally:
        browser.quit()
        server.shutdown()
        server.server_close()
    assert state["ready"] == "complete"
    assert len(state["images"]) == PLOTS
    for complete, width, height in state["images"]:
        assert complete and width > 0 and height > 0, state["images"]
    assert Recorder.asked == ["/index.html"] and state["fetched"] == []
    assert state["tables"] == {
        "table-results-0": 2,
        "table-verdicts-0": 10,
        "table-details-0": 2,
        "table-details-1": 8,
    }
    assert state["worse"] == 5
    assert "REGRESSED" in state["summary"]
