"""A run's official numbers and artifacts, from the samples the controller stored.

When a run completes, the worker calls :func:`finish_run` once with the run's hash
(``controller.keys.RUN_FIELDS``), every sample record the agent published (exactly
``farm.sample.Sample.to_record()``, plus ``power_samples`` and ``power_events`` in energy
mode) and the runner info of its ``done`` event. It writes the run's folder through the same
code ``farm run`` uses (``farm.run_output.RunFolder``, which scores with ``farm.scoring``):

- the official files of the mode, exactly as ``farm run`` writes them: ``results.txt``,
  ``results.json``, ``log.txt``; ``energy_inf_NNN.png`` in energy mode;
  ``mlperf_log_summary.txt`` and ``latency.json`` (supplemental) in latency mode;
- ``samples.jsonl`` (the records in seq order, without the energy traces) and ``run.json``
  (what run the folder holds), as ``farm run`` writes them;
- ``summary.json``: :class:`RunSummary`, the numbers a dashboard or an exporter needs.

The controller has no dataset files: the dataset rows (file names and truth for results.json
and the per-file accuracy grouping) come from the official index shipped in the package
(``farm.datasets.official_rows``; ad01's ``y_labels_alt.csv`` with the ``alt`` option). A
sample whose row or label does not fit that index cannot be scored and is refused. An sww01
stream carries its truth windows with its logs; the controller checks them against the
shipped official truth file the run names (``truth`` option, default
``sww_long_test.json``), whose entry also gives the wav's name.

The folder is built next to its final path and moved into place when complete, so a reader
never sees half a folder and a repeated call (a retried job) replaces the previous folder
instead of appending to its results.txt (which the official checker would then misread,
docs/measurement.md#run-folder). Pure code: no Redis, no MQTT.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.store import run_firmware
from farm import scoring
from farm.catalog import LATEST_VERSION, Benchmark, BenchmarkError, get_benchmark
from farm.datasets import ALT_INDEX, INDEX, DatasetError, Row, official_rows
from farm.messages import RunInfoRecord, RunOptions, SampleRecord
from farm.run_output import SUBSET_NOTE, RunFolder
from farm.sample import Sample, StreamCapture
from farm.scripts import run_script, script_log_lines, script_subset
from farm.sww_truth import OFFICIAL_TRUTH, TruthFile, official_truth

MODES: tuple[str, ...] = ("performance", "accuracy", "energy", "latency")
SUMMARY_FILE = "summary.json"
#: The checker version whose closed-division targets ``target`` and ``target_met`` use.
QUALITY_VERSION = LATEST_VERSION


class ResultsError(ValueError):
    """The stored run cannot be scored: an unknown benchmark or mode, invalid options or
    runner info, records that are not one complete set numbered 0..n-1, or samples that do
    not fit the official index. Nothing is written (or left behind)."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run's numbers, as stored in ``summary.json`` and the run hash's ``summary``.

    Null (``None``) where the mode does not give the number:

    - ``throughput_ips``: performance; the median window throughput (inf./s) as
      ``farm.scoring`` computes it (full precision; results.txt prints it ``%10.3f``). Where
      the official runner writes no median (ERROR 1: not exactly 5 windows; ERROR 2: the loop
      took under 10 s) it is still the windows' median, and ``valid`` is false.
    - ``latency_ms``: performance; the published latency ``1000 / throughput_ips``.
    - ``top1``: accuracy of a classifier (kws, vww, ic, ic2); in **percent**, the value the
      official checker reads from results.txt: the ``Top 1% = 91.3`` line, printed with one
      decimal (docs/measurement.md#accuracy-targets); e.g. 180 of 200 files right -> 90.0.
    - ``auc``: accuracy of ad01; the ROC AUC over per-file mean scores as the checker reads
      it (``AUC = 0.929``, three decimals). (ad's "Top 1%" line is not top-1: ``top1`` is
      null for ad01; classifiers' AUC is in results.txt but not here.)
    - ``energy_uj``: energy; the median energy per inference in µJ (full precision;
      results.txt prints ``%5.4f``). Null for sww01, whose energy metric is its power.
    - sww01 (its energy run, one stream), the numbers as the checker reads them from
      results.txt: ``throughput_ips`` (the estimated throughput, 1 / mean processing time)
      and ``latency_ms`` (1000 / it, as the final report publishes it), ``true_positives``,
      ``false_negatives``, ``false_positives``, ``f1`` (2 TP / (2 TP + FP + FN)),
      ``duty_cycle``, ``power_mw`` (mean power over the stream); ``target`` is the
      closed-division limit on FP and on FN (8) and ``target_met`` whether both are within.
    - ``p50_us``, ``p90_us``, ``p99_us``, ``p90_early_stop_us``: latency mode, supplemental;
      LoadGen SingleStream floor-index percentiles and the p90 early-stopping estimate, in
      integer µs (null when early stopping does not apply: fewer than 64 queries).
    - ``target`` / ``target_met``: accuracy mode (and sww01); the closed-division threshold of
      :data:`QUALITY_VERSION` (top-1 percent or AUC) and whether the printed, rounded value
      reaches it, as the checker decides (89.95 prints 90.0 and passes kws). A missing or NaN
      AUC does not meet it. Computed on a subset too (``valid`` is then false).
    - ``valid``: the result is one a submission could use: not a subset (``limit``), and per
      mode the official rules: performance no ERROR and every window 10 s or more (under
      30 s on a direct link); energy no ERROR line and a number; latency LoadGen's three
      minimums (queries, duration, early stopping); accuracy the complete official sample
      set, every vector scorable and the metric computable. Independent of ``target_met``.
      When false, ``problems`` says why.
    - ``problems``: ``RunFolder.problems`` (also ``problem:`` lines in log.txt), including
      those the controller adds (subset, incomplete sample set, latency minimums).
    - ``artifacts``: the run folder.
    - ``firmware``: what produced the results, from the run hash's ``firmware`` (the agent's
      ``started`` event): ``model``, ``build``, ``image`` (file name), ``sha256`` (of the
      image file), ``profile`` and ``name`` (the DUT's answers), ``software`` (the agent's
      version); null when the run hash has none (an agent older than this field).
    """

    throughput_ips: float | None = None
    latency_ms: float | None = None
    top1: float | None = None
    auc: float | None = None
    energy_uj: float | None = None
    p50_us: int | None = None
    p90_us: int | None = None
    p99_us: int | None = None
    p90_early_stop_us: int | None = None
    true_positives: int | None = None
    false_negatives: int | None = None
    false_positives: int | None = None
    f1: float | None = None
    duty_cycle: float | None = None
    power_mw: float | None = None
    samples: int = 0
    valid: bool = False
    target: float | None = None
    target_met: bool | None = None
    problems: tuple[str, ...] = ()
    artifacts: str = ""
    firmware: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The summary as strict JSON values (NaN and infinity, which JSON cannot hold,
        become null: a zero median throughput has no finite latency)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSummary:
        """Read a summary back from :meth:`to_json`'s dict (unknown keys are an error)."""
        values = dict(data)
        values["problems"] = tuple(values.get("problems") or ())
        return cls(**values)


@dataclass(frozen=True, slots=True)
class OfficialIndex:
    """The dataset as ``RunFolder`` needs it (``rows[sample.index]``, ad01's windows per
    file), from the official index shipped in the package."""

    rows: tuple[Row, ...]
    windows_per_file: int | None
    source: str
    """``farm/data/y_labels/<id>/<index file>``, for the log."""
    windows_from: str | None = None
    """Where ``windows_per_file`` comes from, for the log."""


def finish_run(
    run: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    info: RunInfoRecord | Mapping[str, Any],
    folder: Path,
    *,
    windows_per_file: int | None = None,
) -> RunSummary:
    """Score a completed run from its stored samples and write its folder.

    ``run`` is the run hash (``benchmark``, ``mode``, ``options`` as ``RunOptions`` JSON,
    and for the log ``id``, ``sweep``, ``board``, ``agent``, ``dataset``); ``records`` every
    stored sample record, in any order; ``info`` the ``done`` event's runner info; ``folder``
    the run's folder (``results/<sweep>/<board>/<benchmark>/<mode>``), created, or replaced
    if it exists. ``windows_per_file`` (ad01) overrides what the samples tell (accuracy
    mode: the highest window + 1) or, where they cannot tell, the 196 windows of the assumed
    102,400-byte files (docs/measurement.md#datasets); it only fills results.json's
    ``total_length`` and the completeness check of an accuracy run.

    Raises :class:`ResultsError` (nothing written) when the run cannot be scored.
    """
    bench, mode, options = parse_run(run)
    run_info = parse_info(info)
    truth = run_truth(bench, options)
    samples = stored_samples(records, truth)
    if truth is not None:
        index = OfficialIndex((), None, f"farm/data/sww/{truth.name}" if truth.entries else "")
        coverage = stream_problems(samples, truth)
    else:
        index = official_index(bench, mode, options, samples, windows_per_file)
        check_rows(samples, index, bench)
        coverage = coverage_problems(samples, bench, mode, options, index)

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        summary = _write(
            work, folder, run, bench, mode, options, run_info, samples, index, coverage, truth
        )
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, ValueError) and not isinstance(exc, ResultsError):
            # The scorers refuse what the official runner would crash on (events that
            # cannot delimit an energy window, result vectors of different lengths, ...).
            raise ResultsError(f"cannot score the run: {exc}") from exc
        raise
    _publish(work, folder)
    return summary


# -- inputs ------------------------------------------------------------------------------------


def _text(run: Mapping[str, Any], name: str) -> str:
    value = run.get(name)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def parse_run(run: Mapping[str, Any]) -> tuple[Benchmark, str, RunOptions]:
    """The benchmark, mode and options of a run hash."""
    try:
        bench = get_benchmark(_text(run, "benchmark"))
    except BenchmarkError as exc:
        raise ResultsError(str(exc)) from None
    mode = _text(run, "mode")
    if mode not in MODES:
        raise ResultsError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    try:
        bench.script("performance" if mode == "latency" else mode)
    except BenchmarkError as exc:
        raise ResultsError(str(exc)) from None
    text = _text(run, "options").strip()
    try:
        options = RunOptions.model_validate_json(text) if text else RunOptions()
    except ValidationError as exc:
        raise ResultsError(f"run options: {exc}") from None
    return bench, mode, options


def parse_info(info: RunInfoRecord | Mapping[str, Any]) -> RunInfoRecord:
    """The runner info of the ``done`` event (a mapping may carry more of
    ``agent.runner.RunInfo``'s fields, such as ``started``; they are not needed)."""
    if isinstance(info, RunInfoRecord):
        return info
    known = RunInfoRecord.model_fields
    try:
        return RunInfoRecord.model_validate({k: v for k, v in info.items() if k in known})
    except ValidationError as exc:
        raise ResultsError(f"runner info: {exc}") from None


def run_truth(bench: Benchmark, options: RunOptions) -> TruthFile | None:
    """sww01: the truth file the run names, as far as the controller has it: the shipped
    official file, or (another name) an empty one, whose entries the controller does not
    know; ``None`` for the other benchmarks."""
    if not bench.streamed:
        return None
    name = options.truth or bench.dataset.index
    return official_truth(name) if name in OFFICIAL_TRUTH else TruthFile(name, ())


def stored_samples(
    records: Sequence[Mapping[str, Any]], truth: TruthFile | None = None
) -> list[Sample]:
    """The records as ``Sample`` objects in seq order (``Sample.from_record``, plus the
    energy traces and, for sww01, the stream named from ``truth``), checked to be one
    complete set numbered 0..n-1."""
    if not records:
        raise ResultsError("no samples stored")
    parsed: list[SampleRecord] = []
    for record in records:
        try:
            parsed.append(SampleRecord.model_validate(_nan_for_null(record)))
        except ValidationError as exc:
            raise ResultsError(f"sample record seq {record.get('seq')!r}: {exc}") from None
    parsed.sort(key=lambda r: r.seq)
    seqs = Counter(r.seq for r in parsed)
    repeated = sorted(s for s, n in seqs.items() if n > 1)
    if repeated:
        raise ResultsError(f"seq stored more than once: {_some(repeated)}")
    missing = sorted(set(range(parsed[-1].seq + 1)) - set(seqs))
    if missing:
        raise ResultsError(
            f"{len(missing)} sample(s) missing below the last seq {parsed[-1].seq}: "
            f"{_some(missing)}; a run is scored only on all of its samples"
        )
    return [_sample(r, truth) for r in parsed]


def _nan_for_null(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """NaN where a vector holds null: JSON has no NaN, and pydantic's ``model_dump_json``
    writes an unparsable power sample (NaN, docs/measurement.md#energy-validity) or a
    ``nan`` result as null. Scored as NaN, as the official runner would."""
    fixed = {
        key: [math.nan if v is None else v for v in record[key]]
        for key in ("results", "power_samples")
        if isinstance(record.get(key), list) and None in record[key]
    }
    return {**record, **fixed} if fixed else record


def _some(values: list[int], shown: int = 10) -> str:
    head = ", ".join(str(v) for v in values[:shown])
    return head + (f" ... ({len(values)} in all)" if len(values) > shown else "")


def _sample(record: SampleRecord, truth: TruthFile | None) -> Sample:
    sample = Sample.from_record(record.model_dump())
    if record.power_samples is not None or record.power_events is not None:
        sample = dataclasses.replace(
            sample,
            power_samples=tuple(record.power_samples or ()),
            power_events=tuple((int(c), int(i)) for c, i in record.power_events or ()),
        )
    if truth is None or record.stream_length_s == 0:
        return sample
    # The numbers came with the record; the names from the truth file the run names.
    entry = truth.entries[record.index] if record.index < len(truth.entries) else None
    stream = StreamCapture(
        truth_file=truth.name,
        wav_file=entry.wav_file if entry is not None else None,
        windows=tuple((float(a), float(b)) for a, b in record.stream_windows),
        length_s=float(record.stream_length_s),
        sample_rate=record.stream_sample_rate,
        detections_ms=tuple(record.detections_ms),
        duty_starts=tuple(record.duty_starts),
        duty_stops=tuple(record.duty_stops),
    )
    return dataclasses.replace(sample, stream=stream)


def stream_problems(samples: Sequence[Sample], truth: TruthFile) -> list[str]:
    """sww01: the run is one stream (else it cannot be scored: :class:`ResultsError`); what
    makes it invalid: a truth file that is not an official one, or windows that differ from
    the official entry's."""
    if len(samples) != 1 or samples[0].stream is None:
        raise ResultsError(
            f"an sww01 run is one stream with the interface board's logs; {len(samples)} "
            "sample(s) stored" + ("" if not samples or samples[0].stream else " without them")
        )
    sample = samples[0]
    stream = sample.stream
    assert stream is not None
    if not truth.entries:
        return [
            f"truth file {truth.name} is not an official one ({', '.join(OFFICIAL_TRUTH)}): "
            "not valid for submission"
        ]
    if sample.index >= len(truth.entries):
        raise ResultsError(
            f"seq 0: truth entry {sample.index}, but {truth.name} has {len(truth.entries)}"
        )
    entry = truth.entries[sample.index]
    if (stream.windows, stream.length_s) != (entry.windows, entry.length_s):
        return [
            f"the stream's truth windows differ from {truth.name}'s entry for "
            f"{entry.wav_file}: the agent's truth file is not the official one, not valid "
            "for submission"
        ]
    return []


def official_index(
    bench: Benchmark,
    mode: str,
    options: RunOptions,
    samples: Sequence[Sample],
    windows_per_file: int | None = None,
) -> OfficialIndex:
    """The official index rows of the run's dataset and, for ad01, its windows per file."""
    spec = bench.dataset
    try:
        rows = tuple(official_rows(spec.id, alt=options.alt))
    except DatasetError as exc:
        raise ResultsError(str(exc)) from None
    source = f"farm/data/y_labels/{spec.id}/{ALT_INDEX if options.alt else INDEX}"
    windows = origin = None
    if spec.window_bytes is not None:
        if windows_per_file is not None:
            windows, origin = windows_per_file, "given by the caller"
        elif mode == "accuracy" and len({s.index for s in samples}) >= 2:
            # Accuracy runs cover every window of a file before the next file.
            windows = 1 + max(s.segment or 0 for s in samples)
            origin = "from the stored samples"
        else:
            windows = spec.synth_windows
            origin = (
                f"assumed: {spec.synth_file_bytes}-byte files (docs/measurement.md#datasets); "
                "the stored samples do not tell"
            )
    return OfficialIndex(rows, windows, source, origin)


def check_rows(samples: Sequence[Sample], index: OfficialIndex, bench: Benchmark) -> None:
    """Every sample's row exists in the official index and has the label it was run with
    (else the agent's dataset is another index, and file names and truth would be wrong)."""
    n = len(index.rows)
    for s in samples:
        if s.index >= n:
            raise ResultsError(
                f"seq {s.seq}: dataset row {s.index}, but the official {bench.dataset_id} "
                f"index {index.source} has {n} rows"
            )
        row = index.rows[s.index]
        if s.label != row.label:
            raise ResultsError(
                f"seq {s.seq}: label {s.label} for row {s.index} ({row.file}), but the "
                f"official index {index.source} says {row.label}: the agent's dataset is not "
                "the official index"
            )


def _expected_inputs(
    bench: Benchmark, mode: str, options: RunOptions, index: OfficialIndex
) -> list[tuple[int, int | None]]:
    """(row, window) of every input the run makes, in order: ``Dataset.inputs`` of the
    run's script on the official index, as the runner takes them (performance and energy
    the first ``windows`` of the script's loop; latency rotates through the first
    ``latency_inputs`` of the performance inputs; ``limit`` cuts all but latency)."""
    windowed = bench.dataset.window_bytes is not None
    loop = run_script(bench, mode, options.script).loop or len(index.rows)
    if mode == "accuracy":
        per_file = (index.windows_per_file or 0) if windowed else 1
        out = [
            (row.index, seg if windowed else None)
            for row in index.rows[:loop]
            for seg in range(per_file)
        ]
        return out if options.limit is None else out[: options.limit]
    firsts = [(row.index, 0 if windowed else None) for row in index.rows[:loop]]
    if mode == "latency":
        return firsts[: max(1, options.latency_inputs)]
    out = firsts[: options.windows]
    return out if options.limit is None else out[: options.limit]


def coverage_problems(
    samples: Sequence[Sample],
    bench: Benchmark,
    mode: str,
    options: RunOptions,
    index: OfficialIndex,
) -> list[str]:
    """Where the samples are not the inputs the official script runs (a run on a partial
    dataset, an accuracy set with a hole): each makes the result invalid."""
    got = [(s.index, s.segment) for s in samples]
    if mode == "latency":
        rotation = set(_expected_inputs(bench, mode, options, index))
        outside = [s.seq for s, g in zip(samples, got, strict=True) if g not in rotation]
        if outside:
            return [
                f"{len(outside)} latency queries on inputs outside the first "
                f"{len(rotation)} performance inputs (seq {_some(outside)})"
            ]
        return []
    expected = _expected_inputs(bench, mode, options, index)
    if got == expected:
        return []
    what = f"the official {mode} inputs of {index.source}"
    if options.limit is not None:
        what += f" (first {options.limit})"
    first = next(
        (k for k, (g, e) in enumerate(zip(got, expected, strict=False)) if g != e),
        min(len(got), len(expected)),
    )
    detail = ""
    if first < min(len(got), len(expected)):
        (gi, gs), (ei, es) = got[first], expected[first]
        detail = (
            f"; seq {first} is row {gi} window {gs}, the official order has row {ei} window {es}"
        )
    return [f"{len(got)} samples, {what} are {len(expected)}{detail}: not valid for submission"]


# -- writing -------------------------------------------------------------------------------


def _write(
    work: Path,
    folder: Path,
    run: Mapping[str, Any],
    bench: Benchmark,
    mode: str,
    options: RunOptions,
    info: RunInfoRecord,
    samples: Sequence[Sample],
    index: OfficialIndex,
    coverage: list[str],
    truth: TruthFile | None,
) -> RunSummary:
    identity = {
        "benchmark": bench.id,
        "mode": mode,
        "dataset": _text(run, "dataset"),
        "alt": options.alt,
        "limit": options.limit,
        "run": _text(run, "id"),
        "sweep": _text(run, "sweep"),
        "board": _text(run, "board"),
        "agent": _text(run, "agent"),
        "index": index.source,
    }
    out = RunFolder.at(work, bench, mode, options, identity)
    dataset = _text(run, "dataset") or "the agent's default"
    out.log(f"benchmark {bench.id}, mode {mode}, dataset {dataset}")
    against = (
        f"the official index {index.source}"
        if truth is None
        else f"the truth file {truth.name}"
        + (" (official)" if truth.entries else " (not an official one: its windows as streamed)")
    )
    out.log(
        f"run {_text(run, 'id')} of sweep {_text(run, 'sweep')} on board {_text(run, 'board')} "
        f"(agent {_text(run, 'agent')}): scored by the controller from {len(samples)} stored "
        f"samples against {against}"
    )
    if index.windows_per_file is not None:
        out.log(
            f"{bench.dataset_id} windows per file: {index.windows_per_file} ({index.windows_from})"
        )
    script_mode = "performance" if mode == "latency" else mode
    used = run_script(bench, mode, options.script, options.truth)
    for line in script_log_lines(bench, script_mode, used):
        out.log(line)
    for problem in coverage:
        out.add_problem(problem)
    out.add_samples(samples)
    out.finish(info, index if truth is None else truth)

    fields, valid, reasons = _numbers(out, bench, mode)
    if options.limit is not None:
        reasons.insert(0, SUBSET_NOTE.format(n=options.limit))
        valid = False
    if (part := script_subset(mode, used, len(index.rows))) is not None:
        reasons.insert(0, part)
        valid = False
    if coverage:
        valid = False
    for reason in reasons:
        out.add_problem(reason)
    summary = RunSummary(
        **fields,
        samples=len(samples),
        valid=valid,
        problems=tuple(out.problems),
        artifacts=str(folder),
        firmware=run_firmware(run),
    )
    (work / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


def _numbers(out: RunFolder, bench: Benchmark, mode: str) -> tuple[dict[str, Any], bool, list[str]]:
    """The summary's numbers from the scorer's result the folder kept, whether they are
    valid by the mode's rules, and the reasons not already among the folder's problems."""
    result = out.result
    reasons: list[str] = []
    if mode == "performance":
        assert isinstance(result, scoring.PerformanceResult)
        # Reported even when an official error suppresses the printed median; ``valid``
        # then says false and ``problems`` why.
        median = result.measured_median
        latency = None if median is None else (math.inf if median == 0 else 1000 / median)
        fields = {"throughput_ips": median, "latency_ms": latency}
        return fields, result.valid, reasons
    if isinstance(result, scoring.SwwResult):
        reading = result.reading
        throughput = reading.throughput
        target = bench.target(QUALITY_VERSION)
        fields = {
            "throughput_ips": throughput,
            "latency_ms": None if not throughput else 1000 / throughput,
            "true_positives": reading.true_positives,
            "false_negatives": reading.false_negatives,
            "false_positives": reading.false_positives,
            "f1": reading.f1,
            "duty_cycle": reading.duty_cycle,
            "power_mw": reading.power_mw,
            "target": target.threshold,
            "target_met": result.target_met,
        }
        reasons = [p for p in result.problems if p not in out.problems]
        return fields, result.valid and not out.problems, reasons
    if mode == "energy":
        assert isinstance(result, scoring.EnergyResult)
        # farm run logs only the runner's ERROR lines; the per-trial reasons (short, NaN)
        # say which window it was.
        reasons = [p for p in result.problems if p not in out.problems]
        return {"energy_uj": result.median_uj}, result.valid, reasons
    if mode == "latency":
        assert isinstance(result, scoring.LatencySummary)
        es = result.early_stopping_p90
        fields = {
            "p50_us": result.percentile_ns(0.5) // 1000,
            "p90_us": result.percentile_ns(0.9) // 1000,
            "p99_us": result.percentile_ns(0.99) // 1000,
            "p90_early_stop_us": None if es.estimate_ns is None else es.estimate_ns // 1000,
        }
        if not result.min_queries_met:
            reasons.append(
                f"latency: {result.count} queries, fewer than the minimum {result.min_queries}"
            )
        if not result.min_duration_met:
            reasons.append(
                f"latency: the last query was issued at {result.final_query_issued_s:.3f} s, "
                f"before the minimum duration of {result.min_duration_s} s"
            )
        if not result.early_stopping_met:
            reasons.append(
                f"latency: {result.count} queries; early stopping needs at least {es.min_queries}"
            )
        return fields, result.valid, reasons
    assert isinstance(result, scoring.AccuracyResult)
    target = bench.target(QUALITY_VERSION)
    if bench.metric == "top1":
        value: float | None = result.top1
        fields = {"top1": scoring.checker_capture(result.top1_text)}
    else:
        value = result.auc
        text = result.auc_text
        fields = {"auc": None if text is None else scoring.checker_capture(text)}
    met = (
        value is not None and scoring.check_accuracy_target(bench.id, value, QUALITY_VERSION).passed
    )
    captured = next(iter(fields.values()))
    if captured is None and not out.problems:
        reasons.append(f"the checker reads no {bench.metric} value from results.txt")
    fields.update(target=target.threshold, target_met=met)
    valid = captured is not None and not out.problems and not reasons
    return fields, valid, reasons


def _publish(work: Path, folder: Path) -> None:
    """Move the finished folder into place, replacing an earlier one (a retried job)."""
    if folder.exists() or folder.is_symlink():
        old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.replaced")
        folder.rename(old)
        work.rename(folder)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        work.rename(folder)
