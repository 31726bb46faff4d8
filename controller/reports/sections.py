"""What the page shows, in order: the results table, the verdicts, then the plots (per-board
bars against the baseline, latency distributions, energy traces, history strips) and the
runs' details, each section saying what its plots are drawn from."""

from __future__ import annotations

from controller.render import Listing
from controller.reports import plots
from controller.reports.data import ReportData
from controller.reports.page import Plot, Section


def verdicts(data: ReportData, tables: dict[str, Listing]) -> Section:
    """The verdicts table, or why there is none."""
    section = Section("verdicts", "Verdicts")
    if "verdicts" in tables:
        section.tables.append(tables["verdicts"])
    else:
        section.paragraphs.append(f"No verdicts: {data.no_verdicts}")
    return section


def bars(data: ReportData) -> Section:
    """Per board: throughput, energy and accuracy per benchmark, the baseline's beside."""
    section = Section("bars", "Per board against the baseline")
    section.paragraphs.append(
        "Median throughput, energy per inference and accuracy per benchmark: the baseline's "
        "value (grey; the median of its sweeps) beside this sweep's, coloured by the verdict "
        "(red worse, green better, blue same or no verdict)."
        if data.comparison is not None
        else "This sweep's values (no baseline to set beside them)."
    )
    for board in data.boards:
        found = data.bars(board)
        if found:
            section.plots.append(
                Plot(f"{board}: throughput, energy, accuracy", plots.bars_figure(board, found))
            )
    return section


def latency(data: ReportData) -> Section:
    """Per board × benchmark: the latency run's CDF and histogram."""
    section = Section("latency", "Latency distributions")
    section.paragraphs.append(
        "Per-inference latencies of each latency-mode run (samples.jsonl), with the newest "
        "baseline run's where there is one; dotted lines mark the LoadGen p90 (supplemental)."
        if data.latencies
        else "No latency-mode run in this sweep."
    )
    for r in data.latencies:
        against = "" if r.baseline_run is None else f" against run {r.baseline_run}"
        section.plots.append(
            Plot(
                f"{r.board} {r.benchmark}: latency CDF and histogram of run {r.current_run}"
                f"{against}",
                plots.latency_figure(r),
            )
        )
    return section


def energy(data: ReportData) -> Section:
    """Per energy run: the power traces of its windows."""
    section = Section("energy", "Energy traces")
    section.paragraphs.append(
        "The power monitor's trace of every timed window of each energy-mode run "
        "(results.json: one sample per millisecond), aligned on the event that starts the "
        "measured inferences; the legend gives each window's energy per inference."
        if data.energy
        else "No energy-mode run in this sweep."
    )
    for run in data.energy:
        if run.windows:
            section.plots.append(
                Plot(
                    f"{run.board} {run.benchmark}: power trace of run {run.run}",
                    plots.energy_figure(run),
                )
            )
        else:
            section.paragraphs.append(f"{run.board} {run.benchmark} (run {run.run}): {run.note}")
    return section


def history(data: ReportData) -> Section:
    """Per metric: a strip per board × benchmark over the label's earlier sweeps."""
    section = Section("history", "History")
    section.paragraphs.append(
        f"Each metric per board × benchmark over the sweeps labelled {data.label!r} before "
        "this one (controller history; grey squares: the baseline's sweeps, orange: this "
        "sweep)."
        if data.strips
        else "No history recorded for this sweep's runs."
    )
    for key, title in plots.METRIC_TITLES.items():
        strips = [s for s in data.strips if s.metric.key == key]
        section.plots += [
            Plot(f"history of {title}", image) for image in plots.history_figures(key, strips)
        ]
    return section


def sections(data: ReportData, tables: dict[str, Listing]) -> list[Section]:
    """The page's sections, in order."""
    return [
        Section("results", "Results", tables=[tables["results"]]),
        verdicts(data, tables),
        bars(data),
        latency(data),
        energy(data),
        history(data),
        Section("details", "Runs and firmware", tables=[tables["details"], tables["firmware"]]),
    ]
