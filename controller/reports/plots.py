"""The report's plots, drawn with matplotlib's Agg backend into PNG bytes.

Figures are made with ``matplotlib.figure.Figure`` and an Agg canvas, never through
``pyplot``: nothing is registered in pyplot's global figure list, so nothing has to be closed
and a long-lived process (the nightly job) cannot accumulate figures; each figure is freed
once its PNG is written.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from controller.reports.data import MONITOR_HZ, Bar, EnergyRun, LatencyRuns, Strip
from farm.scoring.loadgen import percentile_index

DPI = 90
#: Bars and points coloured by verdict; the baseline is grey.
COLOURS = {
    "worse": "#c0392b",
    "better": "#1e8449",
    "same": "#2e6da4",
    "new": "#2e6da4",
    "missing": "#999999",
    None: "#2e6da4",
}
BASELINE = "#9a9a9a"
#: This sweep's point in a history strip.
CURRENT = "#d35400"
#: Strips per history figure (a larger sweep gets several figures per metric).
STRIPS_PER_FIGURE = 12
#: At most this many histogram bins.
MAX_BINS = 60
METRIC_TITLES = {
    "throughput_ips": "median throughput (inf./s, higher is better)",
    "energy_uj": "energy per inference (µJ, lower is better)",
    "top1": "top-1 (%, higher is better)",
    "auc": "AUC (higher is better)",
    "p90_us": "p90 latency (µs, supplemental, lower is better)",
    "p90_early_stop_us": "early-stopping p90 (µs, supplemental, lower is better)",
}


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes (Agg)."""
    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def latency_figure(runs: LatencyRuns) -> bytes:
    """The latency run's per-inference latencies: their CDF and histogram, the newest
    baseline run's beside them, the LoadGen p90 of each marked."""
    figure = Figure(figsize=(10, 3.4), layout="constrained")
    cdf, hist = figure.subplots(1, 2)
    series = [("this sweep", runs.current, COLOURS[None], "-")]
    if runs.baseline:
        series.insert(0, ("baseline", runs.baseline, BASELINE, "--"))
    everything = sorted(v for _, values, _, _ in series for v in values)
    low, high = everything[0], everything[-1]
    bins = min(MAX_BINS, max(10, int(math.sqrt(len(everything)))))
    edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
    for name, values, colour, style in series:
        ordered = sorted(values)
        n = len(ordered)
        p90 = ordered[percentile_index(n, 0.9)]
        cdf.step(
            ordered,
            [(i + 1) / n for i in range(n)],
            where="post",
            color=colour,
            linestyle=style,
            label=f"{name}: {n} queries, p90 {p90} µs",
        )
        cdf.axvline(p90, color=colour, linestyle=":", linewidth=1)
        hist.hist(
            ordered,
            bins=edges,
            histtype="stepfilled" if name == "this sweep" else "step",
            color=colour,
            alpha=0.55 if name == "this sweep" else 1.0,
            linestyle=style,
            label=name,
        )
    cdf.set(xlabel="latency (µs)", ylabel="fraction of queries", title="CDF")
    cdf.grid(alpha=0.3)
    cdf.legend(fontsize=8, loc="lower right")
    hist.set(xlabel="latency (µs)", ylabel="queries", title="histogram")
    hist.grid(alpha=0.3)
    hist.legend(fontsize=8)
    figure.suptitle(f"{runs.board} {runs.benchmark}: per-inference latency (latency mode)")
    return png(figure)


def bars_figure(board: str, bars: Sequence[Bar]) -> bytes:
    """Per metric (throughput, energy, accuracy; ``bars`` holds at least one) one panel of
    bars per benchmark: the baseline's value (grey) beside this sweep's (coloured by its
    verdict), each labelled with its value, a changed one with its verdict and change."""
    keys = [
        k
        for k in ("throughput_ips", "energy_uj", "top1", "auc")
        if any(b.metric.key == k for b in bars)
    ]
    figure = Figure(figsize=(3.4 * len(keys), 3.6), layout="constrained")
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        shown = sorted((b for b in bars if b.metric.key == key), key=lambda b: b.benchmark)
        where = list(range(len(shown)))
        paired = any(b.baseline is not None for b in shown)
        width = 0.36
        now_x = [x + width / 2 if paired else x for x in where]
        if paired:
            base = ax.bar(
                [x - width / 2 for x in where],
                [_value(b.baseline) for b in shown],
                width,
                color=BASELINE,
                label="baseline",
            )
            ax.bar_label(base, [_label(b.baseline) for b in shown], fontsize=7)
        now = ax.bar(
            now_x,
            [_value(b.current) for b in shown],
            width,
            color=[COLOURS.get(b.verdict, COLOURS[None]) for b in shown],
            label="this sweep",
        )
        ax.bar_label(now, [_label(b.current, b) for b in shown], fontsize=7)
        ax.set_xticks(where, [b.benchmark for b in shown])
        ax.set_xlim(-0.75, len(shown) - 0.25)
        ax.margins(y=0.15)
        ax.set_title(METRIC_TITLES[key], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=2, fontsize=8)
    figure.suptitle(
        f"{board}: against the baseline"
        if any(b.baseline is not None for b in bars)
        else f"{board}: this sweep"
    )
    return png(figure)


def _label(value: float | None, bar: Bar | None = None) -> str:
    """A bar's value (and, for this sweep's bar of a changed metric, the verdict and the
    change in percent)."""
    if value is None:
        return "-"
    text = f"{value:.4g}"
    if bar is not None and bar.verdict in ("worse", "better") and bar.baseline:
        text += f"\n{bar.verdict} {100 * (value - bar.baseline) / bar.baseline:+.1f}%"
    return text


def _value(value: float | None) -> float:
    return 0.0 if value is None else value


def energy_figure(run: EnergyRun) -> bytes:
    """Each window's power trace (mW against seconds from the window's start event), the
    measured interval shaded, its energy per inference in the legend."""
    figure = Figure(figsize=(10, 3.4), layout="constrained")
    ax = figure.subplots()
    for i, window in enumerate(run.windows):
        seconds = [(k - window.start) / MONITOR_HZ for k in range(len(window.power_mw))]
        energy = (
            "events do not delimit it"
            if window.uj_per_inference is None
            else f"{window.uj_per_inference:.4f} µJ/inf. x {window.inferences}"
        )
        ax.plot(seconds, window.power_mw, linewidth=0.7, label=f"window {i}: {energy}")
    measured = [w for w in run.windows if w.stop > w.start]
    if measured:
        longest = max((w.stop - w.start) / MONITOR_HZ for w in measured)
        ax.axvspan(0, longest, color="#f5b041", alpha=0.15, label="measured (between events)")
    median = "" if run.median_uj is None else f", median {run.median_uj:.4f} µJ/inf."
    ax.set(
        xlabel="seconds from the window's start event",
        ylabel="power (mW)",
        title=f"{run.board} {run.benchmark}: energy mode power trace{median}",
    )
    ax.grid(alpha=0.3)
    # Beside the axes: inside, it would hide the trace's start or end.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return png(figure)


def history_figures(key: str, strips: Sequence[Strip]) -> list[bytes]:
    """One metric's history: a strip per board × benchmark (value per sweep, oldest left;
    this sweep a large orange dot, the baseline's sweeps grey squares)."""
    out = []
    for first in range(0, len(strips), STRIPS_PER_FIGURE):
        chunk = strips[first : first + STRIPS_PER_FIGURE]
        figure = Figure(figsize=(10, 0.5 + 1.1 * len(chunk)), layout="constrained")
        axes = figure.subplots(len(chunk), 1, squeeze=False)[:, 0]
        for ax, strip in zip(axes, chunk, strict=True):
            when = [datetime.fromtimestamp(p.finished, UTC) for p in strip.points]
            values = [p.value for p in strip.points]
            ax.plot(when, values, color=COLOURS[None], linewidth=1, marker=".", markersize=4)
            base = [(w, p.value) for w, p in zip(when, strip.points, strict=True) if p.baseline]
            if base:
                ax.scatter(*zip(*base, strict=True), marker="s", s=22, color=BASELINE, zorder=3)
            now = [(w, p.value) for w, p in zip(when, strip.points, strict=True) if p.current]
            if now:
                ax.scatter(*zip(*now, strict=True), s=40, color=CURRENT, zorder=4)
            ax.set_ylabel(
                f"{strip.board}\n{strip.benchmark}", fontsize=7, rotation=0, ha="right", va="center"
            )
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        figure.suptitle(f"history: {METRIC_TITLES[key]}", fontsize=10)
        out.append(png(figure))
    return out
