"""``farm export submission``: the tree the MLPerf Tiny submission checker reads, from the
runs the controller scored (docs/measurement.md#submission-tree).

Per system (a board) × benchmark × mode the best acceptable run is taken: performance the
highest median throughput, accuracy the highest top-1 (AUC for ad01), energy the lowest
energy per inference. A run is refused, with a one-line reason, when it did not complete,
is not valid (``RunSummary.valid``: a shortened window, an official ERROR, ...), is a subset
(the ``limit`` option, or fewer samples than the official inputs: the checker itself would
take a 10-row accuracy run), or, in the closed division, misses its quality target as the
checker decides it. A benchmark needs an accuracy and a performance result on the same board
(the checker's required tests); energy is optional; ic2 needs ic on the same board. sww01
is one energy-mode stream that gives its throughput, accuracy and power at once: the checker
requires no test of it, reads everything from ``energy/`` and takes it alone; a stream is
refused unless it is of an official truth file with the long file's 50 wakewords (TP + FN),
and in the closed division unless it has at most 8 false positives and 8 false negatives.

The tree::

    OUT/<division>/<submitter>/systems/<board>.json
    OUT/<division>/<submitter>/results/<board>/<model>/{accuracy,performance,energy}/
    OUT/<division>/<submitter>/results/<board>/sww/energy/
    OUT/<division>/<submitter>/code/README.md

``<model>`` is always the checker's name (kws, vww, ic, ic2, ad, sww), in the open division
too: the v1.3/v1.4 checker looks a model folder's required tests up by its name and stops
with a ``KeyError`` on any other, so a renamed model with a ``model_mapping.json`` cannot be
checked. Each mode folder holds exactly the files the checker expects (``log.txt``,
``results.txt``, ``results.json``; energy also its ``energy_inf_NNN.png``, sww01's one
``energy_inf_000.png``), copied from the run folder. The tree is built beside its final
place and moved there whole; an existing one is never overwritten. The results table is
read back from the written tree with the checker's own patterns, so it shows what the
checker will read.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import keys
from controller.render import Column, Listing, number
from controller.sweep_view import PAGE_ORDER
from farm import scoring
from farm.catalog import Benchmark, BenchmarkError, get_benchmark
from farm.datasets import official_rows
from farm.messages import RunOptions, RunScript
from farm.scoring.performance import REQUIRED_WINDOWS
from farm.scripts import run_script
from farm.sww_truth import LONG_TRUTH, OFFICIAL_TRUTH

DIVISIONS = ("closed", "open")
#: Checker versions whose rules the tree follows (older ones crash the current checker).
CHECKER_VERSIONS = ("v1.3", "v1.4")
#: What the checker requires per benchmark, and what it takes besides.
REQUIRED_TESTS = ("accuracy", "performance")
OPTIONAL_TESTS = ("energy",)
#: sww01's: the checker requires none; the farm runs it as one energy-mode stream, whose
#: ``energy/`` folder is the model's whole result.
STREAM_TESTS = ("energy",)
#: The checker's file list of every mode folder (``results.json`` is tolerated if absent,
#: but the official runner writes it, so it is copied too).
REQUIRED_FILES = ("log.txt", "results.json", "results.txt")
ENERGY_PLOTS = "energy_inf_*.png"
#: sww01's one plot, the whole stream's power, which the checker requires in its energy/.
SWW_PLOT = "energy_inf_000.png"
#: The checker's models per version (``ic2`` from v1.4).
CHECKER_MODELS = {
    "v1.3": ("ad", "ic", "kws", "vww", "sww"),
    "v1.4": ("ad", "ic", "ic2", "kws", "vww", "sww"),
}
#: Board system description (the agent's ``system``, field names) -> the systems JSON key.
SYSTEM_KEYS = {
    "status": "Status",
    "board_name": "Board Name",
    "processor_name": "Processor(s) Name",
    "processor_frequencies": "Processor(s) Frequencies",
    "processor_memory": "Processor memory type and capacity",
    "accelerator": "Accelerator",
    "accelerator_frequencies": "Accelerator(s) Frequencies",
    "accelerator_memory": "Accelerator memory type and capacity",
    "hardware_notes": "Hardware Notes",
    "inference_framework": "Inference Framework",
    "software_libraries": "Software Libraries",
    "software_notes": "Software Notes",
    "operating_system": "Operating System",
    "ml_model_compilers": "ML Model Compiler(s)",
    "general_compilers": "General Compiler(s)",
    "quantization_method": "Quantization Method",
}
#: The descriptive keys of published systems files that no board field fills (written empty).
OTHER_SYSTEM_KEYS = (
    "Other Software Stack",
    "Training framework (open division)",
    "Other Software",
    "Training and Quantization Notes",
)
#: The checker's patterns (``re.match`` from the line start, except energy: ``re.search``).
PERFORMANCE_PATTERN = re.compile(r".* Median throughput is\s+([\d\.]+) inf\./sec\..*")
ACCURACY_PATTERNS = {
    "top1": re.compile(r".* Top[- ]1%?\s?[:=] ([\d\.]+).*"),
    "auc": re.compile(r".* AUC\s?[:=] ([\d\.]+).*"),
}
ENERGY_PATTERN = re.compile(r"Median energy cost is ([\d\.]+) uJ/inf")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SubmissionError(ValueError):
    """The export cannot be made as asked (bad name, division, version, an existing tree)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One stored run, as the export judges it."""

    run: str
    sweep: str
    board: str
    benchmark: str
    mode: str
    state: str
    summary: Mapping[str, Any] | None
    reason: str = ""
    limit: int | None = None
    alt: bool = False
    truth: str | None = None
    """sww01: the truth file the run streamed (``None``: the official long one)."""
    script: RunScript | None = None
    """The user's test script the run followed (``None``: the farm's)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a run (or a board's benchmark, ``run`` None) is not in the tree."""

    board: str
    benchmark: str
    mode: str
    reason: str
    run: str | None = None

    def line(self) -> str:
        """The one-line reason printed for it."""
        what = f"{self.board} {self.benchmark} {self.mode}"
        return f"refused {what}" + (f" (run {self.run})" if self.run else "") + f": {self.reason}"


@dataclass(slots=True)
class Export:
    """What an export wrote (``root`` None when nothing could be exported) and refused."""

    division: str
    submitter: str
    version: str
    chosen: dict[tuple[str, str, str], Candidate] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)
    root: Path | None = None
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The export as ``--format json`` prints it."""
        return {
            "division": self.division,
            "submitter": self.submitter,
            "version": self.version,
            "root": None if self.root is None else str(self.root),
            "chosen": [
                {"board": b, "benchmark": n, "mode": m, "run": c.run, "sweep": c.sweep}
                for (b, n, m), c in sorted(self.chosen.items())
            ],
            "refused": [
                {
                    "board": r.board,
                    "benchmark": r.benchmark,
                    "mode": r.mode,
                    "run": r.run,
                    "reason": r.reason,
                }
                for r in self.refused
            ],
            "results": self.table_rows(),
        }

    def table_rows(self) -> list[dict[str, Any]]:
        """The results page's rows, read back from the tree (empty before it is written)."""
        return [] if self.root is None else results_rows(self)


def check_request(submitter: str, division: str, version: str) -> None:
    """Refuse a submitter name the tree cannot hold, an unknown division or version."""
    if not _NAME.match(submitter):
        raise SubmissionError(
            f"submitter {submitter!r}: letters, digits, '_', '.', '-' only, starting with a "
            "letter or digit (the checker warns on spaces and a leading dot)"
        )
    if division not in DIVISIONS:
        raise SubmissionError(f"division {division!r}: closed or open")
    if version not in CHECKER_VERSIONS:
        raise SubmissionError(f"version {version!r}: one of {', '.join(CHECKER_VERSIONS)}")


def model_dir(benchmark: str) -> str:
    """The checker's model directory of a benchmark (kws01 -> kws, ic02 -> ic2, ...)."""
    return scoring.MODEL_DIRS[benchmark]


# -- judging -----------------------------------------------------------------------------------


def _official_inputs(benchmark: str, mode: str, alt: bool) -> int:
    """The fewest samples a complete run of the mode has: every official row in accuracy
    (ad01: at least one window each), the script's five windows otherwise."""
    if mode == "accuracy":
        return len(official_rows(get_benchmark(benchmark).dataset_id, alt=alt))
    return REQUIRED_WINDOWS


def _metric(c: Candidate) -> float | None:
    summary = c.summary or {}
    if c.benchmark == "sww01":
        # The stream's checker metrics come together; its energy one is the mean power.
        power = summary.get("power_mw")
        return None if power is None else -power
    if c.mode == "performance":
        return summary.get("throughput_ips")
    if c.mode == "energy":
        value = summary.get("energy_uj")
        return None if value is None else -value
    return summary.get("auc") if c.benchmark == "ad01" else summary.get("top1")


def refusal(c: Candidate, division: str, version: str) -> str | None:
    """Why ``c`` cannot be submitted, or None."""
    if c.state != "completed" or c.summary is None:
        return f"run {c.state}" + (f": {c.reason}" if c.reason else "")
    try:
        bench = get_benchmark(c.benchmark)
    except BenchmarkError as exc:
        return str(exc)
    if version not in bench.targets:
        return f"{bench.checker_dir} is not part of MLPerf Tiny {version}"
    if division == "closed" and (why := script_refusal(c, bench)) is not None:
        return why
    if bench.streamed:
        return stream_refusal(c, division, version)
    summary = c.summary
    if c.limit is not None:
        return f"subset run (limit {c.limit}): not valid for submission"
    samples = int(summary.get("samples") or 0)
    need = _official_inputs(c.benchmark, c.mode, c.alt)
    if samples < need:
        return f"subset: {samples} samples, the official {c.mode} run has {need} or more"
    if summary.get("valid") is not True:
        problems = "; ".join(summary.get("problems") or []) or "not valid"
        return f"not valid: {problems}"
    if _metric(c) is None:
        return "the run's summary has no number the checker would read"
    if c.mode == "accuracy" and division == "closed":
        check = scoring.check_accuracy_target(c.benchmark, float(_metric(c) or 0), version)
        if not check.passed:
            name = "top-1" if bench.metric == "top1" else "AUC"
            return (
                f"{name} {check.printed} is below the closed-division target "
                f"{check.target.threshold:g} ({version})"
            )
    return None


def script_refusal(c: Candidate, bench: Benchmark) -> str | None:
    """Why a run's test script keeps it out of the closed division, or None: the closed
    division runs the official steps, only N sized for the board (as submitters do)."""
    if c.script is None or c.mode == "latency":
        return None
    used = run_script(bench, c.mode, c.script, c.truth)
    official = bench.script(c.mode)
    if used.same_steps(official):
        return None
    return (
        f"test script {c.script.source} runs {used.text()}; the closed division runs "
        f"{official.text()} (N aside): export it in the open division"
    )


def stream_refusal(c: Candidate, division: str, version: str) -> str | None:
    """Why the sww01 stream ``c`` (completed, with a summary) cannot be submitted, or None.

    The checker errs unless TP + FN is 50, the wakewords of the official long file, and in
    the closed division unless FP <= 8 and FN <= 8; an open-division stream beyond those
    limits is taken. A stream of another truth file is refused whatever its counts: its
    windows are not the official ones."""
    summary = c.summary or {}
    truth = c.truth or LONG_TRUTH
    if truth not in OFFICIAL_TRUTH:
        return (
            f"a stream of {truth}, not an official truth file "
            f"({', '.join(OFFICIAL_TRUTH)}): not valid for submission"
        )
    counts = [summary.get(k) for k in ("true_positives", "false_negatives", "false_positives")]
    if any(n is None for n in counts):
        return "the run's summary has no detection counts the checker would read"
    tp, fn, fp = (int(n or 0) for n in counts)
    target = scoring.accuracy_target("sww", version)
    if tp + fn != target.required_windows:
        return (
            f"subset: the stream of {truth} has {tp + fn} wakewords (TP + FN), the checker "
            f"needs {target.required_windows} ({LONG_TRUTH})"
        )
    if summary.get("valid") is not True:
        problems = "; ".join(summary.get("problems") or []) or "not valid"
        return f"not valid: {problems}"
    if summary.get("throughput_ips") is None or summary.get("power_mw") is None:
        return "the run's summary has no throughput or power the checker would read"
    limit_fp, limit_fn = target.max_false_positives, target.max_false_negatives
    assert limit_fp is not None and limit_fn is not None
    if division == "closed" and (fp > limit_fp or fn > limit_fn):
        return (
            f"{fp} false positives and {fn} false negatives: the closed division allows at "
            f"most {limit_fp} false positives and {limit_fn} false negatives ({version})"
        )
    return None


def required_tests(benchmark: str) -> tuple[str, ...]:
    """The modes a board's benchmark needs before any of its results is written: accuracy
    and performance (the checker's required tests); sww01 its one stream."""
    return STREAM_TESTS if benchmark == "sww01" else REQUIRED_TESTS


def select(
    candidates: Iterable[Candidate], division: str, version: str
) -> tuple[dict[tuple[str, str, str], Candidate], list[Refusal]]:
    """The best acceptable run per board × benchmark × mode, and every refusal (each
    refused run, then each board's benchmark that lacks a required mode)."""
    best: dict[tuple[str, str, str], Candidate] = {}
    refused: list[Refusal] = []
    for c in candidates:
        if c.mode not in (*REQUIRED_TESTS, *OPTIONAL_TESTS):
            continue  # latency mode is supplemental: never part of a submission
        why = refusal(c, division, version)
        if why is not None:
            refused.append(Refusal(c.board, c.benchmark, c.mode, why, c.run))
            continue
        key = (c.board, c.benchmark, c.mode)
        held = best.get(key)
        if held is None or (_metric(c) or 0) > (_metric(held) or 0):
            best[key] = c
    chosen: dict[tuple[str, str, str], Candidate] = {}
    pairs = sorted({(b, n) for b, n, _ in best})
    complete = {(b, n) for b, n in pairs if all((b, n, m) in best for m in required_tests(n))}
    for board, bench in pairs:
        missing = [m for m in required_tests(bench) if (board, bench, m) not in best]
        if missing:
            refused.append(
                Refusal(
                    board,
                    bench,
                    "-",
                    f"no acceptable {' or '.join(missing)} run: the "
                    "checker requires accuracy and performance",
                )
            )
            continue
        if bench == "ic02" and (board, "ic01") not in complete:
            refused.append(
                Refusal(board, bench, "-", "ic2 needs an ic (ic01) result on the same system")
            )
            continue
        for mode in (*REQUIRED_TESTS, *OPTIONAL_TESTS):
            if (board, bench, mode) in best:
                chosen[(board, bench, mode)] = best[(board, bench, mode)]
    return chosen, refused


# -- writing -----------------------------------------------------------------------------------


def system_json(
    board: str, system: Mapping[str, Any], submitter: str, division: str
) -> dict[str, Any]:
    """``systems/<board>.json``: the board's description under the official keys, every
    official key present (empty when unknown), ``Board Name`` defaulting to the board id;
    never ``system_type`` (the checker refuses any value)."""
    out: dict[str, Any] = {"Submitter": submitter, "Division": division.capitalize()}
    for name, key in SYSTEM_KEYS.items():
        value = system.get(name)
        out[key] = "" if value is None else str(value)
    out["Status"] = (out["Status"] or "available").lower()
    out["Board Name"] = out["Board Name"] or board
    out.update(dict.fromkeys(OTHER_SYSTEM_KEYS, ""))
    return out


def _mode_files(folder: Path, mode: str, benchmark: str) -> list[Path]:
    files = [folder / name for name in REQUIRED_FILES]
    if benchmark == "sww01":
        files.append(folder / SWW_PLOT)  # the checker lists it by name: it must be there
    elif mode == "energy":
        files += sorted(folder.glob(ENERGY_PLOTS))
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SubmissionError(f"run folder {folder} lacks {', '.join(missing)}")
    return files


def write_tree(export: Export, out: Path) -> Path:
    """Write the tree of ``export.chosen`` under ``out`` and return its submitter folder."""
    root = out / export.division / export.submitter
    if root.exists():
        raise SubmissionError(f"{root} exists: the export never overwrites a tree")
    root.parent.mkdir(parents=True, exist_ok=True)
    work = root.with_name(f".{export.submitter}.{uuid.uuid4().hex[:12]}.partial")
    try:
        boards = sorted({b for b, _, _ in export.chosen})
        (work / "systems").mkdir(parents=True)
        for board in boards:
            doc = system_json(
                board, export.systems.get(board, {}), export.submitter, export.division
            )
            (work / "systems" / f"{board}.json").write_text(json.dumps(doc, indent=2) + "\n")
        for (board, bench, mode), c in sorted(export.chosen.items()):
            folder = Path(str((c.summary or {}).get("artifacts") or ""))
            target = work / "results" / board / model_dir(bench)
            (target / mode).mkdir(parents=True)
            for f in _mode_files(folder, mode, bench):
                shutil.copyfile(f, target / mode / f.name)
        (work / "code").mkdir()
        (work / "code" / "README.md").write_text(_code_readme(export))
        work.rename(root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    export.root = root
    return root


def _code_readme(export: Export) -> str:
    runs = "\n".join(
        f"- {board} {bench} {mode}: run {c.run} of sweep {c.sweep}"
        for (board, bench, mode), c in sorted(export.chosen.items())
    )
    return (
        f"# {export.submitter}: code\n\n"
        "Put the firmware sources and build instructions of every system here before "
        "submitting; the results page links to this folder.\n\n"
        f"Exported by tinyfarm from these runs:\n\n{runs}\n"
    )


# -- reading back ------------------------------------------------------------------------------


def _last(pattern: re.Pattern[str], path: Path, search: bool = False) -> str | None:
    """The checker's rule: the last matching line of the file wins."""
    found = None
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = pattern.search(line) if search else pattern.match(line)
        if m:
            found = m.group(1)
    return found


def checker_values(model: Path, metric: str) -> dict[str, float | None]:
    """What the checker reads from a ``results/<system>/<model>`` folder: the median
    throughput, the accuracy (top-1 or AUC) and the median energy, None where absent; for
    sww (``metric`` ``sww``) from ``energy/results.txt`` alone: the estimated throughput, the
    F1 score as the checker computes it from the detection counts, and the mean power
    (``power_mw``)."""
    if metric == "sww":
        path = model / "energy" / "results.txt"
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        reading = scoring.checker_reading(text.splitlines())
        return {
            "throughput": reading.throughput,
            "accuracy": reading.f1,
            "power_mw": reading.power_mw,
        }
    perf = _last(PERFORMANCE_PATTERN, model / "performance" / "results.txt")
    acc = _last(ACCURACY_PATTERNS[metric], model / "accuracy" / "results.txt")
    energy = _last(ENERGY_PATTERN, model / "energy" / "results.txt", search=True)
    return {
        "throughput": None if perf is None else float(perf),
        "accuracy": None if acc is None else float(acc),
        "energy_uj": None if energy is None else float(energy),
    }


def _ordered(benchmarks: Iterable[str]) -> list[str]:
    rank = {b: i for i, b in enumerate((*PAGE_ORDER, "ic02"))}
    return sorted(set(benchmarks), key=lambda b: (rank.get(b, 99), b))


def page_row(
    submitter: str,
    board: str,
    system: Mapping[str, Any],
    values: Mapping[str, Mapping[str, float | None]],
) -> dict[str, Any]:
    """One system's row of the MLPerf Tiny results page: submitter, device, processor,
    accelerator, software (from ``system``, a systems JSON as :func:`system_json` writes it)
    and per benchmark of ``values`` (``throughput``, ``accuracy``, ``energy_uj``, as
    :func:`checker_values` reads them) the latency (ms, 1000 / median throughput), energy
    (µJ per inference) and accuracy (top-1 % or AUC); sww01, as the final report shows it,
    the latency (1000 / the estimated throughput), the mean power (mW, ``power_mw``) and the
    F1 score."""
    row: dict[str, Any] = {
        "submitter": submitter,
        "system": board,
        "availability": system["Status"],
        "device": system["Board Name"],
        "processor": system["Processor(s) Name"],
        "accelerator": system["Accelerator"],
        "software": system["Inference Framework"] or system["Software Libraries"],
    }
    for bench in _ordered(values):
        throughput = values[bench].get("throughput")
        row[f"{bench}_latency_ms"] = None if not throughput else 1000 / throughput
        if bench == "sww01":
            row[f"{bench}_power_mw"] = values[bench].get("power_mw")
        else:
            row[f"{bench}_energy_uj"] = values[bench].get("energy_uj")
        row[f"{bench}_accuracy"] = values[bench].get("accuracy")
    return row


def results_rows(export: Export) -> list[dict[str, Any]]:
    """One row per system, as the MLPerf Tiny results page (:func:`page_row`), read from
    the tree."""
    assert export.root is not None
    rows = []
    for board in sorted({b for b, _, _ in export.chosen}):
        system = json.loads((export.root / "systems" / f"{board}.json").read_text())
        values = {
            bench: checker_values(
                export.root / "results" / board / model_dir(bench), get_benchmark(bench).metric
            )
            for bench in _ordered(n for b, n, _ in export.chosen if b == board)
        }
        rows.append(page_row(export.submitter, board, system, values))
    return rows


def page_listing(
    title: str,
    rows: list[dict[str, Any]],
    benchmarks: Iterable[str],
    *,
    accuracy: bool,
    notes: Sequence[str] = (),
) -> Listing:
    """The results page's table of :func:`page_row` rows: the system columns (submitter
    only when a row names one), then per benchmark latency, energy (sww01: power) and, with
    ``accuracy``, the top-1 % or AUC (sww01: F1)."""
    columns = [
        Column("submitter", "submitter", rank=2),
        Column("system", "system"),
        Column("device", "device", rank=1),
        Column("processor", "processor", rank=1),
        Column("accelerator", "accelerator", rank=2),
        Column("software", "software", rank=2),
    ]
    if not any(row.get("submitter") for row in rows):
        columns = columns[1:]
    for bench in _ordered(benchmarks):
        alias = model_dir(bench)
        columns.append(Column(f"{bench}_latency_ms", f"{alias} ms", number(".3f"), justify="right"))
        metric = get_benchmark(bench).metric
        key, unit, fmt = (
            (f"{bench}_power_mw", "mW", ".3f")
            if metric == "sww"
            else (f"{bench}_energy_uj", "µJ", ".1f")
        )
        columns.append(Column(key, f"{alias} {unit}", number(fmt), rank=1, justify="right"))
        if accuracy:
            heading, fmt = {"auc": ("AUC", ".3f"), "sww": ("F1", ".3f")}.get(
                metric, ("top-1 %", ".1f")
            )
            columns.append(
                Column(f"{bench}_accuracy", f"{alias} {heading}", number(fmt), justify="right")
            )
    return Listing(title, columns, rows, notes=list(notes))


def results_listing(export: Export) -> Listing:
    """The results table (``farm export submission``'s output)."""
    open_division = export.division == "open"
    notes = [
        "latency: ms per inference, 1000 / the median throughput the checker reads; energy: "
        "median µJ per inference (- : no energy run)"
        + (
            "; accuracy: top-1 % (AUC for ad), not held to the closed targets"
            if open_division
            else ""
        )
    ]
    if any(bench == "sww01" for _, bench, _ in export.chosen):
        notes.append(
            "sww: latency 1000 / the estimated throughput; power: mean mW over the stream"
            + ("; accuracy: F1 = 2 TP / (2 TP + FP + FN)" if open_division else "")
        )
    title = f"{export.division} {export.submitter} ({export.version} rules): {export.root}"
    return page_listing(
        title,
        export.table_rows(),
        (n for _, n, _ in export.chosen),
        accuracy=export.division == "open",
        notes=notes,
    )


# -- from Redis --------------------------------------------------------------------------------


def load_candidates(client: Any, sweeps: Sequence[str]) -> list[Candidate]:
    """Every run of ``sweeps`` (all sweeps when empty) as a :class:`Candidate`."""
    from controller.store import sweep_runs

    ids = list(sweeps) or list(client.zrange(keys.SWEEPS, 0, -1))
    found = []
    for sweep_id in ids:
        if not client.exists(keys.sweep(sweep_id)):
            raise SubmissionError(f"no sweep {sweep_id!r} (see farm sweeps)")
        for run_id, run in sweep_runs(client, sweep_id):
            text = run.get("options") or ""
            options = RunOptions.model_validate_json(text) if text.strip() else RunOptions()
            found.append(
                Candidate(
                    run=run_id,
                    sweep=sweep_id,
                    board=run.get("board", ""),
                    benchmark=run.get("benchmark", ""),
                    mode=run.get("mode", ""),
                    state=run.get("state", ""),
                    summary=json.loads(run["summary"]) if run.get("summary") else None,
                    reason=run.get("reason") or "",
                    limit=options.limit,
                    alt=options.alt,
                    truth=options.truth,
                    script=options.script,
                )
            )
    return found


def load_systems(client: Any, boards: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each board's system description, from its last status (the description the agent
    reports now, which is what a submission describes)."""
    from controller.store import board_status

    return {b: dict((board_status(client, b) or {}).get("system") or {}) for b in boards}


def export_submission(
    client: Any,
    out: Path,
    submitter: str,
    division: str,
    sweeps: Sequence[str] = (),
    version: str = "v1.4",
) -> Export:
    """Judge every run of ``sweeps`` and write the tree of the chosen ones under ``out``
    (``root`` stays None when no benchmark of any board is complete)."""
    check_request(submitter, division, version)
    export = Export(division, submitter, version)
    export.chosen, export.refused = select(load_candidates(client, sweeps), division, version)
    if export.chosen:
        export.systems = load_systems(client, {b for b, _, _ in export.chosen})
        write_tree(export, out)
    return export
