"""``farm report``: a sweep's report written into a folder: ``index.html`` (self-contained),
``report.md`` and one CSV file per table (docs/reports.md)."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import redis

from controller.compare import DEFAULT_HISTORY, Baseline
from controller.render import Listing, to_csv, to_markdown
from controller.reports.data import ReportData, ReportError, gather
from controller.reports.page import page
from controller.reports.sections import sections as page_sections
from controller.reports.tables import CSV_FILES, listings
from farm.logs import get_logger

log = get_logger(__name__)

INDEX = "index.html"
MARKDOWN = "report.md"
#: Every file a report may write.
FILES = (INDEX, MARKDOWN, *CSV_FILES.values())
#: The order the summary counts verdicts in.
VERDICTS = ("worse", "better", "same", "new", "missing")


def summary_line(data: ReportData) -> str:
    """One line: the sweep, its runs, and the verdicts' count (or that there are none)."""
    sweep = data.sweep["sweep"]
    states = Counter(r["state"] for r in data.sweep["runs"])
    runs = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no runs"
    head = f"sweep {sweep['id']} ({sweep['label'] or 'no label'}, {sweep['state']}): {runs}"
    if data.comparison is None:
        return f"{head}; no verdicts"
    verdicts = Counter(m.verdict for r in data.comparison.runs for m in r.metrics)
    counted = ", ".join(f"{verdicts[v]} {v}" for v in VERDICTS if verdicts[v])
    against = ", ".join(b.id for b in data.comparison.baseline)
    state = "REGRESSED" if data.comparison.regressed else "no regression"
    return f"{head}; against {against}: {state} ({counted})"


def _markdown(title: str, summary: str, data: ReportData, tables: dict[str, Listing]) -> str:
    parts = [f"# {title}", "", summary, ""]
    if data.no_verdicts is not None:
        parts += [f"No verdicts: {data.no_verdicts}", ""]
    parts += [to_markdown(t) for t in tables.values()]
    parts.append(f"The plots are in {INDEX}.\n")
    return "\n".join(parts)


def _write(path: Path, text: str) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_report(
    client: redis.Redis,
    sweep_id: str,
    out: Path,
    baseline: Baseline | None = None,
    *,
    history: int = DEFAULT_HISTORY,
    results: Path | None = None,
) -> Path:
    """Write the report of ``sweep_id`` into ``out`` (created if needed; the report's files
    replaced) and return its ``index.html``: against ``baseline`` (None: the last good sweep
    of the sweep's label; no such sweep, no verdicts), the noise and the history strips from
    up to ``history`` earlier good sweeps. Raises :class:`ReportError` for an unknown sweep,
    an unusable baseline sweep or a folder that cannot be written."""
    started = time.perf_counter()
    data = gather(client, sweep_id, baseline, history, results)
    read_s = time.perf_counter() - started
    tables = listings(data)
    title = f"tinyfarm report: sweep {sweep_id}"
    summary = summary_line(data)
    sections = page_sections(data, tables)
    files = [MARKDOWN, *(CSV_FILES[name] for name in tables)]
    html = page(
        title,
        summary,
        regressed=None if data.comparison is None else data.comparison.regressed,
        why=None if data.no_verdicts is None else f"No verdicts: {data.no_verdicts}",
        sections=sections,
        files=files,
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, listing in tables.items():
            _write(out / CSV_FILES[name], to_csv(listing))
        for name in CSV_FILES.keys() - tables.keys():
            # An earlier report's table this one has not (verdicts on a night without).
            (out / CSV_FILES[name]).unlink(missing_ok=True)
        _write(out / MARKDOWN, _markdown(title, summary, data, tables))
        _write(out / INDEX, html)  # last: a complete index.html means a complete report
    except OSError as exc:
        raise ReportError(f"cannot write the report into {out}: {exc}") from None
    log.info(
        "report_written",
        sweep=sweep_id,
        out=str(out),
        plots=sum(len(s.plots) for s in sections),
        verdicts=data.comparison is not None,
        read_s=round(read_s, 3),
        total_s=round(time.perf_counter() - started, 3),
    )
    return out / INDEX
