"""Evaluation datasets in the official layout: ``<root>/<id>/y_labels.csv`` + the files it names.

The index has no header. Rows are ``file,classes,label`` (kws01, vww01, ic01) or
``file,2,label,bytes_to_send,stride`` (ad01); the kws01-open variant separates fields with
``, `` and the leading spaces are tolerated, as ``int()`` does in the official runner.

``load_dataset`` validates everything a run depends on before anything is sent to a board (the
index, every named file and its size) and raises a ``DatasetError`` that lists the problems.
``Dataset.inputs(mode)`` then gives the inference inputs of a mode in the official order:
performance and energy use rows 1-5 (ad01: each file's first window only), accuracy every row
(ad01: every window of every file). Inputs read their bytes lazily, so a 48,608-window ad01
accuracy run never holds more than one window in memory.

The official index files ship with the package (``farm/data/y_labels``, from mlcommons/tiny,
Apache-2.0); ``official_index`` returns them.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from farm.catalog import MODES, Benchmark, DatasetSpec, get_benchmark, get_dataset_spec
from farm.script_grammar import Script

INDEX = "y_labels.csv"
ALT_INDEX = "y_labels_alt.csv"
#: Problems listed in one error before the rest are only counted.
MAX_LISTED = 10


class DatasetError(Exception):
    """A dataset cannot be used; the message says why (file:line for index problems)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)


@dataclass(frozen=True, slots=True)
class Row:
    """One row of an index file."""

    index: int
    """0-based row number (blank lines not counted): the dataset file index of a sample. In a
    subset of the official index (``load_dataset``), the row's number in the official one."""
    file: str
    classes: int
    label: int
    bytes_to_send: int | None
    stride: int | None
    line: int
    """1-based line in the index file, for messages."""
    fields: tuple[str, ...]
    """The raw fields, leading spaces kept, as the official runner's truth dict holds them."""

    def truth(self) -> dict[str, str | None]:
        """The row as the official runner's ``csv.DictReader`` gives it (results.json keys)."""
        names = ("file", "classes", "class", "bytes_to_send", "stride")
        values: list[str | None] = [*self.fields, None, None][:5]
        return dict(zip(names, values, strict=True))


@dataclass(frozen=True, slots=True)
class InferenceInput:
    """One ``download`` of a script: which bytes of which file go to the DUT."""

    row: Row
    segment: int | None
    """ad01: the window index within the file; ``None`` for the classifiers."""
    path: Path
    offset: int
    length: int

    @property
    def index(self) -> int:
        """The dataset row (file index) this input comes from."""
        return self.row.index

    @property
    def label(self) -> int:
        """The row's true label."""
        return self.row.label

    @property
    def file(self) -> str:
        """The file name as the index gives it."""
        return self.row.file

    def read(self) -> bytes:
        """The input's bytes, read from disk now."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(self.length)
        if len(data) != self.length:
            # Sizes were validated when the dataset was loaded: the file changed since.
            raise DatasetError(
                f"{self.path}: expected {self.length} bytes at offset {self.offset}, "
                f"got {len(data)} (file changed since the dataset was checked?)"
            )
        return data


def windows(size: int, window: int, stride: int) -> int:
    """Windows the official runner cuts from ``size`` bytes: starts at 0, 0+stride, ...;
    a window that would run past the end is dropped."""
    return 0 if size < window else (size - window) // stride + 1


def parse_index(text: str, source: str) -> list[Row]:
    """Parse an index file's text; ``source`` names it in messages (``source:line: ...``).

    Checks only the row shape (3 or 5 fields, integers where numbers belong); what is valid
    for a particular benchmark is ``load_dataset``'s job.
    """
    rows: list[Row] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = tuple(next(csv.reader([line])))
        where = f"{source}:{lineno}"
        if len(fields) not in (3, 5):
            problems.append(f"{where}: expected 3 or 5 comma-separated fields, got {len(fields)}")
            continue
        numbers: list[int] = []
        for name, value in zip(
            ("classes", "label", "bytes_to_send", "stride"), fields[1:], strict=False
        ):
            try:
                numbers.append(int(value))
            except ValueError:
                problems.append(f"{where}: {name} {value!r} is not an integer")
                break
        else:
            file = fields[0].strip()
            if not file:
                problems.append(f"{where}: empty file name")
                continue
            size, stride = (numbers[2], numbers[3]) if len(numbers) == 4 else (None, None)
            rows.append(Row(len(rows), file, numbers[0], numbers[1], size, stride, lineno, fields))
    if problems:
        raise _error(problems)
    return rows


def official_index(dataset: str, *, alt: bool = False) -> str:
    """The text of the official index shipped in the package (``alt``: ad01's
    ``y_labels_alt.csv``). ``dataset`` is a dataset or benchmark id or alias."""
    spec = get_dataset_spec(dataset)
    name = _index_name(spec, alt)
    return (resources.files("farm") / "data" / "y_labels" / spec.id / name).read_text()


def official_rows(dataset: str, *, alt: bool = False) -> list[Row]:
    """The rows of the shipped official index (see ``official_index``)."""
    spec = get_dataset_spec(dataset)
    source = f"farm/data/y_labels/{spec.id}/{_index_name(spec, alt)}"
    return parse_index(official_index(spec.id, alt=alt), source)


def stratified_rows(rows: Sequence[Row], limit: int) -> list[Row]:
    """``limit`` rows taken round-robin across the classes, each class's in index order (the
    first rows of class 0, 1, ... then the second of each...), so any ``limit`` of at least
    the number of classes holds every class; a class that runs out is skipped."""
    by_class: dict[int, list[Row]] = {}
    for row in rows:
        by_class.setdefault(row.label, []).append(row)
    queues = [by_class[label] for label in sorted(by_class)]
    picked: list[Row] = []
    depth = 0
    while len(picked) < min(limit, len(rows)):
        picked += [q[depth] for q in queues if depth < len(q)][: limit - len(picked)]
        depth += 1
    return picked


def official_numbers(rows: Sequence[Row], dataset: str, *, alt: bool = False) -> list[Row]:
    """``rows`` renumbered as the official index numbers them when every row is one of its
    rows, field for field (a subset, in any order); otherwise unchanged. Results then name
    the same row number whichever subset a board ran, as the controller scores them."""
    official = {row.fields: row.index for row in official_rows(dataset, alt=alt)}
    if not all(row.fields in official for row in rows):
        return list(rows)
    return [dataclasses.replace(row, index=official[row.fields]) for row in rows]


@dataclass(frozen=True, slots=True)
class Dataset:
    """A validated dataset folder for one benchmark."""

    benchmark: Benchmark
    folder: Path
    index_path: Path
    rows: tuple[Row, ...]
    windows_per_file: int | None
    """ad01: windows in every file (all files have the same count); ``None`` otherwise."""

    def inputs(
        self, mode: str, *, limit: int | None = None, script: Script | None = None
    ) -> list[InferenceInput]:
        """The inference inputs of ``mode`` in the official order.

        performance/energy: the first ``loop`` rows of the script (5), ad01 only the first
        window of each; accuracy: every row, ad01 every window of every row (row-major).
        ``limit`` keeps only the first ``limit`` inputs (a test subset, not a valid run);
        without it, a dataset with fewer rows than the script loops over is an error.
        ``script`` is a user's test script for the mode (default: the farm's).
        """
        if mode not in MODES:
            raise DatasetError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        loop = (script or self.benchmark.script(mode)).loop
        rows = self.rows if loop is None else self.rows[:loop]
        if limit is None and loop is not None and len(rows) < loop:
            raise DatasetError(
                f"{self.index_path}: {mode} mode loops over the first {loop} rows, "
                f"but the index has only {len(self.rows)}"
            )
        every_window = mode == "accuracy"
        out: list[InferenceInput] = []
        for row in rows:
            path = self.folder / row.file
            if row.bytes_to_send is None or row.stride is None:
                out.append(InferenceInput(row, None, path, 0, self.benchmark.input_bytes))
            else:
                count = self.windows_per_file if every_window else 1
                for seg in range(count or 0):
                    out.append(InferenceInput(row, seg, path, seg * row.stride, row.bytes_to_send))
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out

    def count(self, mode: str, *, script: Script | None = None) -> int:
        """How many inputs ``inputs(mode, script=script)`` yields (without building them)."""
        loop = (script or self.benchmark.script(mode)).loop
        files = len(self.rows) if loop is None else min(loop, len(self.rows))
        if mode == "accuracy" and self.windows_per_file is not None:
            return files * self.windows_per_file
        return files


def load_dataset(root: Path | str, benchmark: Benchmark | str, *, alt: bool = False) -> Dataset:
    """Open and validate ``<root>/<dataset id>/y_labels.csv`` (``alt``: ad01's
    ``y_labels_alt.csv``) and every file it names for ``benchmark`` (id, alias or object).

    Checks run in this order and the first that fails raises ``DatasetError`` listing all of
    its problems: the folder and the index exist; every row is well formed (``file:line``);
    class counts, labels and (ad01) window fields fit the benchmark; every named file exists;
    every file has the model's input size (ad01: at least one window, and the same window
    count in every file, which the official runner assumes: docs/measurement.md#datasets). An
    unknown benchmark name raises ``farm.catalog.BenchmarkError``.
    """
    bench = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark)
    spec = bench.dataset
    root = Path(root)
    folder = root / spec.id
    index_name = _index_name(spec, alt)
    index_path = folder / index_name
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not folder.is_dir():
        hint = ""
        if (root / INDEX).is_file():
            hint = f"; {root} looks like a dataset folder itself: pass its parent"
        raise DatasetError(
            f"no {spec.id} folder in {root} (expected {index_path} and the files it names){hint}"
        )
    if not index_path.is_file():
        raise DatasetError(f"{index_path} is missing")
    rows = parse_index(index_path.read_text(errors="replace"), str(index_path))
    if not rows:
        raise DatasetError(f"{index_path}: no rows")
    problems = _check_rows(rows, bench, str(index_path))
    if problems:
        raise _error(problems, f"{index_path} does not fit {bench.id}")
    windows_per_file = _check_files(rows, bench, index_path)
    rows = official_numbers(rows, spec.id, alt=alt)
    return Dataset(bench, folder, index_path, tuple(rows), windows_per_file)


def _index_name(spec: DatasetSpec, alt: bool) -> str:
    if alt and not spec.has_alt:
        raise DatasetError(f"{spec.id} has no alternative index (only ad01 has {ALT_INDEX})")
    return ALT_INDEX if alt else INDEX


def _check_rows(rows: list[Row], bench: Benchmark, source: str) -> list[str]:
    n_classes = len(bench.classes)
    ad = bench.dataset.window_bytes is not None
    expected_fields = 5 if ad else 3
    problems: list[str] = []
    seen: dict[str, Row] = {}
    for row in rows:
        where = f"{source}:{row.line}"
        if len(row.fields) != expected_fields:
            problems.append(
                f"{where}: {bench.dataset_id} rows have {expected_fields} fields, "
                f"got {len(row.fields)}"
            )
            continue
        if row.classes != n_classes:
            problems.append(f"{where}: classes is {row.classes}, {bench.id} has {n_classes}")
        if not 0 <= row.label < n_classes:
            problems.append(
                f"{where}: label {row.label} out of range for {bench.id} (0..{n_classes - 1})"
            )
        if ad and row.bytes_to_send != bench.input_bytes:
            problems.append(
                f"{where}: bytes_to_send is {row.bytes_to_send}, the {bench.model.id} model "
                f"takes {bench.input_bytes}-byte windows"
            )
        if ad and (row.stride is None or row.stride <= 0):
            problems.append(f"{where}: stride must be positive, got {row.stride}")
        # A file path must stay inside the dataset folder.
        if "/" in row.file or "\\" in row.file or row.file in (".", ".."):
            problems.append(f"{where}: file name {row.file!r} is not a plain file name")
        if row.file in seen:
            # The official runner groups results by file name: a repeat merges two rows.
            problems.append(
                f"{where}: {row.file} is listed again (first on line {seen[row.file].line})"
            )
        seen.setdefault(row.file, row)
    return problems


def _check_files(rows: list[Row], bench: Benchmark, index_path: Path) -> int | None:
    """Raise unless every named file exists with a usable size; ad01: windows per file."""
    folder = index_path.parent
    sizes = _sizes(folder)
    missing = [f"{r.file} (line {r.line})" for r in rows if r.file not in sizes]
    if missing:
        raise _error(
            missing,
            f"{len(missing)} of the {len(rows)} files named in {index_path} are missing "
            f"from {folder}",
        )
    expected = bench.dataset.file_bytes
    if expected is not None:
        wrong = [
            f"{r.file} is {sizes[r.file]} B (line {r.line})"
            for r in rows
            if sizes[r.file] != expected
        ]
        if wrong:
            raise _error(
                wrong,
                f"{len(wrong)} files in {folder} are not {expected} B, "
                f"the {bench.model.id} input size",
            )
        return None
    # ad01: any whole number of windows, but the same number in every file.
    counts: list[tuple[Row, int]] = []
    for r in rows:
        assert r.bytes_to_send is not None and r.stride is not None  # _check_rows passed
        counts.append((r, windows(sizes[r.file], r.bytes_to_send, r.stride)))
    short = [f"{r.file} is {sizes[r.file]} B (line {r.line})" for r, n in counts if n == 0]
    if short:
        raise _error(
            short,
            f"{len(short)} files in {folder} are smaller than one {bench.input_bytes}-byte window",
        )
    first, n_first = counts[0]
    ragged = [
        f"{r.file} has {n} windows ({sizes[r.file]} B, line {r.line})"
        for r, n in counts
        if n != n_first
    ]
    if ragged:
        raise _error(
            ragged,
            f"ragged {bench.dataset_id} files in {folder}: {len(ragged)} files differ from "
            f"the first, {first.file}, which has {n_first} windows ({sizes[first.file]} B); "
            "the official runner assumes every file has as many windows as the first "
            "(see docs/measurement.md#datasets)",
        )
    return n_first


def _sizes(folder: Path) -> dict[str, int]:
    # One directory scan instead of a stat per row keeps 1,000-file checks instant.
    with os.scandir(folder) as it:
        return {e.name: e.stat().st_size for e in it if e.is_file()}


def _error(problems: list[str], summary: str | None = None) -> DatasetError:
    """One error for a list of problems: the summary, then the first ``MAX_LISTED``."""
    listed = problems[:MAX_LISTED]
    more = len(problems) - len(listed)
    indent = "  " if summary else ""
    lines = ([summary + ":"] if summary else []) + [indent + p for p in listed]
    if more:
        lines.append(f"{indent}... and {more} more")
    return DatasetError("\n".join(lines), problems)
