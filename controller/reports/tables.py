"""The report's tables, as :class:`controller.render.Listing` objects shared by the page,
``report.md`` and the CSV files: the results page (``controller.submission``'s table, one row
per system), the verdicts (``farm compare``'s), and ``farm show``'s per-benchmark results and
firmware tables."""

from __future__ import annotations

from typing import Any

from controller.compare import listing as verdict_listing
from controller.render import Listing
from controller.reports.data import ReportData
from controller.submission import page_listing, page_row, system_json
from controller.sweep_view import LEGEND, firmware_listing, results_listings
from farm.catalog import BenchmarkError, get_benchmark

#: The tables in the order the page and report.md show them, with their CSV file names.
CSV_FILES = {
    "results": "results.csv",
    "verdicts": "verdicts.csv",
    "details": "details.csv",
    "firmware": "firmware.csv",
}
PAGE_NOTE = (
    "latency: ms per inference, 1000 / the median throughput (performance mode); energy: "
    "median µJ per inference (energy mode); accuracy: top-1 % (AUC for ad01); sww01, from "
    "its one stream: latency 1000 / the estimated throughput, power in mW, accuracy F1; - : "
    "no completed run of the mode."
)


def _accuracy(benchmark: str, summary: dict[str, Any]) -> float | None:
    try:
        metric = get_benchmark(benchmark).metric
    except BenchmarkError:
        return None
    return summary.get(metric)


def results_page(data: ReportData) -> Listing:
    """One row per board as the MLPerf Tiny results page shows a system: device, processor,
    accelerator, software, and per benchmark latency, energy and accuracy, from the sweep's
    completed runs (a result that is not valid is listed in the notes)."""
    summaries = data.summaries()
    rows = []
    for board in data.boards:
        values: dict[str, dict[str, float | None]] = {}
        for (b, bench, mode), summary in summaries.items():
            if b != board:
                continue
            got = values.setdefault(bench, {})
            if bench == "sww01":
                # One stream gives all three, read as the checker reads them.
                got["throughput"] = summary.get("throughput_ips")
                got["power_mw"] = summary.get("power_mw")
                got["accuracy"] = summary.get("f1")
            elif mode == "performance":
                got["throughput"] = summary.get("throughput_ips")
            elif mode == "energy":
                got["energy_uj"] = summary.get("energy_uj")
            elif mode == "accuracy":
                got["accuracy"] = _accuracy(bench, summary)
        system = system_json(board, data.systems.get(board, {}), "", "closed")
        rows.append(page_row("", board, system, values))
    invalid = [
        f"{b} {bench} {mode}"
        for (b, bench, mode), summary in sorted(summaries.items())
        if mode != "latency" and summary.get("valid") is not True
    ]
    notes = [PAGE_NOTE]
    if invalid:
        notes.append(f"not valid (the details say why): {', '.join(invalid)}")
    sweep = data.sweep["sweep"]
    benchmarks = {bench for _, bench, mode in summaries if mode != "latency"}
    return page_listing(
        f"sweep {sweep['id']} {sweep['label']} ({sweep['state']})",
        rows,
        benchmarks,
        accuracy=True,
        notes=notes,
    )


def listings(data: ReportData) -> dict[str, Listing]:
    """Every table of the report by name (:data:`CSV_FILES`'s keys; no ``verdicts`` without
    a comparison)."""
    details = results_listings(data.sweep)[0]
    found = {"results": results_page(data)}
    if data.comparison is not None:
        found["verdicts"] = verdict_listing(data.comparison)
    found["details"] = Listing(details.title, details.columns, details.rows, notes=LEGEND)
    found["firmware"] = firmware_listing(data.sweep)
    return found
