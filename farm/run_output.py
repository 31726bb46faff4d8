"""A run's folder and the files in it, in the official runner's formats
(docs/measurement.md#output-files).

``RunFolder.create`` makes a fresh folder (``<out>/<YYYYMMDD_HHMMSS>``, as the official
runner's sessions) and marks it incomplete at once, so a run that dies any way at all leaves
a folder that says so. Samples are appended to ``samples.jsonl`` as they arrive (flushed per
line); ``finish`` scores the run with ``farm.scoring`` and writes ``results.txt``,
``results.json`` and ``log.txt`` (plus ``energy_inf_NNN.png`` in energy mode, and the
supplemental ``mlperf_log_summary.txt`` and ``latency.json`` in latency mode), then removes
the marker. An sww01 run (one stream) gets the runner's sww files: the energy block and the
accuracy, duty-cycle and throughput lines, and its one results.json element.

``RunFolder.at`` makes the folder at an exact path instead (the controller's
``results/<sweep>/<board>/<benchmark>/<mode>``), and ``add_samples`` feeds it samples rebuilt
from stored records, so the controller writes the same files through the same code.

``samples.jsonl``: one JSON object per sample with ``seq``, ``index`` (dataset row),
``segment`` (AD window or null), ``window`` (timed window or null), ``label``,
``latency_us`` (DUT-timed per-inference µs or null), ``results`` (the raw vector), and as the
mode gives them ``count``, ``warmup``, ``start_us``, ``end_us``, ``elapsed_us``, ``wrapped``,
``wall_s``, ``energy_j``, ``energy_window_s``; sww01's ``stream`` (the truth entry and the
interface board's detection and duty-cycle logs); ``subset: true`` on every line of a run cut
short with ``--limit``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from farm import scoring
from farm.catalog import Benchmark
from farm.png import line_plot
from farm.sample import Sample

PREFIX = "ulp-mlperf: "
INCOMPLETE = "INCOMPLETE"
#: What run a folder holds (benchmark, mode, dataset, alt, limit), checked on --resume.
RUN_FILE = "run.json"
SUBSET_NOTE = "subset run (--limit {n}): NOT VALID FOR SUBMISSION"
MODE_LETTER = {"performance": "p", "accuracy": "a", "energy": "e", "latency": "l"}


class RunInfoLike(Protocol):
    """What the runner observed (``agent.runner.RunInfo``)."""

    count: int | None
    calibration: list[tuple[int, int]]
    loop_wall_s: float
    last_issue_s: float


class DatasetLike(Protocol):
    """The dataset the run used (``farm.datasets.Dataset``)."""

    @property
    def rows(self) -> Sequence[Any]:
        """The index rows, by row number."""
        ...


def _row(dataset: DatasetLike, index: int) -> Any:
    """The row numbered ``index``: a subset of the official index keeps the official row
    numbers (``farm.datasets.official_numbers``), so a row's number need not be its place."""
    rows = dataset.rows
    if index < len(rows) and rows[index].index == index:
        return rows[index]
    return next(row for row in rows if row.index == index)


def stamp(t: float | None = None) -> str:
    """The official line prefix's timestamp, ``%m%d.%H%M%S``."""
    return time.strftime("%m%d.%H%M%S", time.localtime(t))


def window_lines(number: int, inferences: int, window: scoring.PerfWindow) -> list[str]:
    """One performance window's block of results.txt, in the official runner's shapes
    (docs/measurement.md#official-results-lines): no timestamp prefix, and ``Runtime`` and
    ``Throughput`` as Python prints a float (``str``), e.g. ``Runtime: 10.388207 sec.``.
    A window without two laps prints ``Runtime: 0.0 sec.``; a throughput of zero prints
    ``0``, as the runner's integer zero does."""
    elapsed_s = window.elapsed_s or 0.0
    throughput: float | int = window.throughput or 0
    out = [
        f"Performance results for window {number}",
        f"    # Inferences : {inferences}",
        f"    Runtime: {elapsed_s} sec.",
        f"    Throughput: {throughput} inf./sec.",
    ]
    if window.runtime_met:
        out.append("    Runtime requirements have been met.")
    return out


class RunFolder:
    """One run's output folder."""

    def __init__(self, path: Path, bench: Benchmark, mode: str, settings: Any) -> None:
        self.path = path
        self.bench = bench
        self.mode = mode
        self.settings = settings
        self.limit: int | None = settings.limit
        self.samples: list[Sample] = []
        self._samples_file = (path / "samples.jsonl").open("a")
        self._log_file = (path / "log.txt").open("a")
        self.result: object | None = None
        self.problems: list[str] = []
        """What makes the result invalid or differ from the official runner's (also in
        log.txt as ``problem:`` lines); ``farm run`` repeats them on stderr."""

    @classmethod
    def create(
        cls,
        out: Path,
        bench: Benchmark,
        mode: str,
        settings: Any,
        identity: dict[str, Any] | None = None,
    ) -> RunFolder:
        """A fresh folder under ``out`` named by the start time (``-2``, ``-3``... if taken:
        results.txt is appended to by the official tools, so a folder is never reused)."""
        out.mkdir(parents=True, exist_ok=True)
        base = time.strftime("%Y%m%d_%H%M%S")
        path, n = out / base, 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
                path = out / f"{base}-{n}"
        return cls._start(path, bench, mode, settings, identity)

    @classmethod
    def at(
        cls,
        path: Path,
        bench: Benchmark,
        mode: str,
        settings: Any,
        identity: dict[str, Any] | None = None,
    ) -> RunFolder:
        """A folder at exactly ``path`` (the controller chooses
        ``results/<sweep>/<board>/<benchmark>/<mode>``), otherwise as :meth:`create`: marked
        incomplete at once, ``run.json`` written, a subset run noted. ``path`` may exist only
        as an empty directory: results.txt is appended to, so a folder is never reused."""
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise FileExistsError(f"{path} is not empty: a run folder is never reused")
        return cls._start(path, bench, mode, settings, identity)

    @classmethod
    def _start(
        cls,
        path: Path,
        bench: Benchmark,
        mode: str,
        settings: Any,
        identity: dict[str, Any] | None,
    ) -> RunFolder:
        """The new folder at ``path`` (an empty directory): marked incomplete at once,
        ``run.json`` written, a subset run noted."""
        (path / INCOMPLETE).write_text("run in progress\n")
        (path / RUN_FILE).write_text(json.dumps(identity or {}, indent=2) + "\n")
        folder = cls(path, bench, mode, settings)
        if folder.limit is not None:
            folder.log(SUBSET_NOTE.format(n=folder.limit))
        return folder

    @staticmethod
    def check_resumable(path: Path, identity: dict[str, Any]) -> None:
        """Refuse to continue a folder that is complete or was another run (benchmark, mode,
        dataset, ``--alt`` or ``--limit`` differ): its samples would be scored as this one's."""
        if not (path / INCOMPLETE).exists():
            raise ValueError(f"{path} is not an incomplete run folder (no {INCOMPLETE} marker)")
        recorded = json.loads((path / RUN_FILE).read_text())
        differ = [k for k in identity if recorded.get(k) != identity[k]]
        if differ:
            parts = ", ".join(f"{k} {recorded.get(k)!r} there, {identity[k]!r} now" for k in differ)
            raise ValueError(f"it is another run ({parts})")

    @classmethod
    def reopen(cls, path: Path, bench: Benchmark, mode: str, settings: Any) -> RunFolder:
        """An interrupted run's folder, to continue it: its ``samples.jsonl`` is read back
        (a torn last line, from a kill mid-write, is dropped) and the run goes on from the
        next sequence number, so the final scores cover every sample exactly once."""
        if not (path / INCOMPLETE).exists():
            raise ValueError(f"{path} is not an incomplete run folder (no {INCOMPLETE} marker)")
        stored: list[Sample] = []
        lines = (path / "samples.jsonl").read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except ValueError:
                if number == len(lines):
                    break
                raise ValueError(f"{path / 'samples.jsonl'}:{number}: not JSON") from None
            if record["seq"] != len(stored):
                where = f"{path / 'samples.jsonl'}:{number}"
                raise ValueError(f"{where}: seq {record['seq']}, expected {len(stored)}")
            stored.append(Sample.from_record(record))
        # Rewrite the file without a torn tail so appends start on a fresh line.
        (path / "samples.jsonl").write_text("".join(f"{line}\n" for line in lines[: len(stored)]))
        (path / INCOMPLETE).write_text("run in progress (resumed)\n")
        folder = cls(path, bench, mode, settings)
        folder.samples.extend(stored)
        folder.log(f"resumed at seq {len(stored)}")
        return folder

    @property
    def next_seq(self) -> int:
        """The sequence number of the next sample."""
        return len(self.samples)

    # -- during the run ----------------------------------------------------------------------

    def log(self, text: str) -> None:
        """A line of log.txt (everything the run printed)."""
        self._log_file.write(f"{stamp()} {PREFIX}{text}\n")
        self._log_file.flush()

    def add_sample(self, sample: Sample) -> None:
        """Keep a sample and append it to samples.jsonl at once."""
        self.samples.append(sample)
        record = sample.to_record()
        if self.limit is not None:
            record["subset"] = True
        self._samples_file.write(json.dumps(record) + "\n")
        self._samples_file.flush()

    def add_samples(self, samples: Iterable[Sample]) -> None:
        """Feed samples a run produced elsewhere (the controller's stored records, rebuilt
        with ``Sample.from_record``), in seq order, exactly as :meth:`add_sample` does."""
        for sample in samples:
            self.add_sample(sample)

    def add_problem(self, text: str) -> None:
        """A problem found outside the scorers (e.g. by the controller: an incomplete sample
        set, a latency run short of its minimums): kept in :attr:`problems` and logged as a
        ``problem:`` line; also allowed after :meth:`finish` (log.txt is appended to)."""
        if self._log_file.closed:
            self.problems.append(text)
            with (self.path / "log.txt").open("a") as log:
                log.write(f"{stamp()} {PREFIX}problem: {text}\n")
        else:
            self._problem(text)

    def mark_incomplete(self, reason: str) -> None:
        """The run stopped early: say so in the marker and the log; keep what was written."""
        self.log(f"run incomplete: {reason}")
        (self.path / INCOMPLETE).write_text(f"run incomplete: {reason}\n")
        self._close()

    # -- at the end --------------------------------------------------------------------------

    def finish(self, info: RunInfoLike, dataset: DatasetLike) -> None:
        """Score the run and write the result files; the folder is then complete."""
        writer = {
            "performance": self._performance,
            "accuracy": self._accuracy,
            "energy": self._stream if self.bench.streamed else self._energy,
            "latency": self._latency,
        }[self.mode]
        if info.count is not None:
            calibration = ", ".join(f"N={n}: {us} us" for n, us in info.calibration)
            self.log(f"calibration windows: {calibration}; N per timed window: {info.count}")
        lines, elements = writer(info, dataset)
        if self.limit is not None:
            note = SUBSET_NOTE.format(n=self.limit)
            lines.append(note if self.mode == "energy" else self._prefixed([note])[0])
            elements.append({"note": SUBSET_NOTE.format(n=self.limit), "mode": self._letter})
        with (self.path / "results.txt").open("a") as out:
            for line in lines:
                out.write(line + "\n")
                self._log_file.write(line + "\n")
        (self.path / "results.json").write_text(json.dumps(elements, indent=2) + "\n")
        (self.path / INCOMPLETE).unlink()
        self._close()

    @property
    def _letter(self) -> str:
        return MODE_LETTER[self.mode]

    def _prefixed(self, bodies: list[str]) -> list[str]:
        now = stamp()
        return [f"{now} {PREFIX}{body}" for body in bodies]

    def _element(
        self, sample: Sample, dataset: DatasetLike, extra: dict[str, Any]
    ) -> dict[str, Any]:
        row = _row(dataset, sample.index)
        truth = row.truth()
        windows = None
        if self.bench.dataset.window_bytes is not None:
            windows = getattr(dataset, "windows_per_file", None)
        infer: dict[str, Any] = {
            "start_time": sample.start_us,
            "end_time": sample.end_us,
            "elapsed_time": sample.elapsed_us,
            "results": list(sample.results),
            "total_inferences": 1,
            "iterations": sample.count,
            "warmups": sample.warmup,
        }
        infer.update(extra)
        return {**truth, "total_length": windows, "infer": infer, "mode": self._letter}

    def _performance(
        self, info: RunInfoLike, dataset: DatasetLike
    ) -> tuple[list[str], list[dict[str, Any]]]:
        windows = [scoring.perf_window(s.count, s.start_us, s.end_us) for s in self.samples]
        result = scoring.score_performance(windows, loop_seconds=info.loop_wall_s)
        self.result = result
        lines: list[str] = []
        elements = []
        for i, (s, w) in enumerate(zip(self.samples, windows, strict=True), start=1):
            lines += window_lines(i, s.count, w)
            elements.append(self._element(s, dataset, {"throughput": w.throughput}))
        # As the official runner: only the lines after the loop carry the timestamp prefix.
        lines += self._prefixed(result.lines())
        for problem in result.problems:
            self._problem(problem)
        if result.error is not None:
            elements.append({"error": f"error {result.error}", "mode": "p"})
        return lines, elements

    def _accuracy(
        self, info: RunInfoLike, dataset: DatasetLike
    ) -> tuple[list[str], list[dict[str, Any]]]:
        result = scoring.score_accuracy(
            (_row(dataset, s.index).file, s.label, s.results) for s in self.samples
        )
        self.result = result
        for problem in result.problems:
            self._problem(problem)
        elements = [self._element(s, dataset, {}) for s in self.samples]
        return self._prefixed(result.lines()), elements

    def _energy(
        self, info: RunInfoLike, dataset: DatasetLike
    ) -> tuple[list[str], list[dict[str, Any]]]:
        windows = [
            scoring.energy_window(s.power_samples, s.power_events, s.count, trial=i)
            for i, s in enumerate(self.samples)
        ]
        result = scoring.score_energy(windows)
        self.result = result
        for line in result.error_lines:
            self._problem(line)  # the official runner prints these to log.txt only
        elements = []
        for i, s in enumerate(self.samples):
            element = self._element(s, dataset, {})
            del element["infer"]["elapsed_time"]  # absent in energy mode
            element["power"] = {
                "samples": list(s.power_samples),
                "timestamps": [[str(n), idx] for n, idx in s.power_events],
                "extracted_power": None,
                "voltage": self.bench.supply_voltage,
            }
            elements.append(element)
            line_plot(
                self.path / f"energy_inf_{i:03d}.png",
                [v * 1e3 * 1000 for v in s.power_samples],  # J per 1 ms sample -> mW
                marks=[idx for _, idx in s.power_events[-2:]],
            )
        return result.lines(), elements

    def _stream(
        self, info: RunInfoLike, dataset: DatasetLike
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """sww01: one stream scored from the board's logs and the power window, as the
        official runner writes it (docs/measurement.md#sww-results)."""
        if len(self.samples) != 1 or self.samples[0].stream is None:
            raise ValueError(f"an sww01 run is one stream; got {len(self.samples)} sample(s)")
        sample = self.samples[0]
        capture = sample.stream
        assert capture is not None
        window = scoring.energy_window(sample.power_samples, sample.power_events, 1)
        energy = scoring.score_energy([window], required_windows=scoring.SWW_REQUIRED_WINDOWS)
        result = scoring.SwwResult(
            capture.wav_file,
            capture.length_s,
            scoring.detection_stats(capture.detections_ms, capture.windows),
            scoring.duty_cycle(capture.duty_starts, capture.duty_stops),
            energy,
        )
        self.result = result
        self.log(f"truth file {capture.truth_file}, wav {capture.wav_file or '(not known)'}")
        for line in result.log_lines():
            self.log(line)
        for line in energy.error_lines:
            self._problem(line)  # the official runner prints these to log.txt only
        for problem in result.problems:
            if problem not in energy.error_lines:
                self._problem(problem)
        for note in result.notes:
            self.log(f"note: {note}")
        duty = result.duty
        element = {
            "infer": {
                "wav_file": capture.wav_file,
                "detection_windows": [list(w) for w in capture.windows],
                "length_sec": capture.length_s,
                "sample_rate": capture.sample_rate,
                "detections": list(capture.detections_ms),
                "iterations": 1,
                "warmups": 0,
            },
            "dutycycle": {
                "duty_cycle": duty.duty_cycle,
                "period": duty.period_s,
                "processing_time": duty.processing_s,
                "start_times_s": list(duty.start_times_s),
                "stop_times_s": list(duty.stop_times_s),
            },
            "activations": [int(v) for v in sample.results],
            "power": {
                "samples": list(sample.power_samples),
                "timestamps": [[str(n), idx] for n, idx in sample.power_events],
                "extracted_power": None,
                "voltage": self.bench.supply_voltage,
            },
            "mode": self._letter,
        }
        line_plot(
            self.path / "energy_inf_000.png",
            [v * 1e3 * 1000 for v in sample.power_samples],
            marks=[idx for _, idx in sample.power_events[-2:]],
        )
        return result.lines(), [element]

    def _latency(
        self, info: RunInfoLike, dataset: DatasetLike
    ) -> tuple[list[str], list[dict[str, Any]]]:
        latencies = [round(s.latency_us) for s in self.samples if s.latency_us is not None]
        summary = scoring.latency_summary(
            latencies,
            final_query_issued_s=info.last_issue_s,
            min_queries=self.settings.min_queries,
            min_duration_s=self.settings.min_duration_s,
        )
        self.result = summary
        text = scoring.loadgen_summary_text(summary, sut_name=self.bench.id)
        document = scoring.latency_json(summary)
        if self.limit is not None:
            note = SUBSET_NOTE.format(n=self.limit)
            text = f"# {note}\n{text}"
            document = {"subset": True, "note": note, **document}
        (self.path / "mlperf_log_summary.txt").write_text(text)
        (self.path / "latency.json").write_text(json.dumps(document, indent=2) + "\n")
        elements = [self._element(s, dataset, {}) for s in self.samples]
        bodies = [scoring.SUPPLEMENTAL_NOTE, *scoring.latency_lines(summary)]
        return self._prefixed(bodies), elements

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        self.log(f"problem: {text}")

    def _close(self) -> None:
        for f in (self._samples_file, self._log_file):
            if not f.closed:
                f.close()
