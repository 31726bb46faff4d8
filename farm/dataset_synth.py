"""Stand-in datasets: the official index files with synthetic inputs of the exact sizes.

The real evaluation binaries are not public, so tests, simulators and demos use a dataset the
project writes itself: ``<out>/<id>/y_labels.csv`` byte-identical to the official index
(shipped in ``farm/data/y_labels``) and every file it names, filled by
``farm.synthetic.encode_input`` with the row's label and a difficulty ``u``.

``u`` is spread evenly: the sorted values are ``(i + 0.5) / n``, shuffled with a fixed seed
per dataset, so a simulated board configured with top-1 accuracy ``q`` answers exactly
``round(q * n)`` of the ``n`` files correctly. For ad01, ``u`` is spread per class, so the
board's AUC is met up to the discreteness of 140 x 108 files; with the alternative index
(``alt``) its 72 files get their own even spread, so both sets reach the AUC.

The quality itself is the simulated board's setting, not the dataset's: one dataset shows
different boards with different accuracies.

sww01's dataset is its truth files (``<out>/sww01/sww_*_test.json``, the official ones): its
wav files live on the interface board's SD card, where the simulator builds them from the same
truth files.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from farm.catalog import DATASETS, DatasetSpec, get_benchmark, get_dataset_spec
from farm.datasets import ALT_INDEX, INDEX, Row, official_index, official_rows, stratified_rows
from farm.sww_truth import DATASET_ID as SWW_DATASET
from farm.sww_truth import OFFICIAL_TRUTH, official_text, official_truth
from farm.synthetic import encode_input

DEFAULT_DATASETS: tuple[str, ...] = ("kws01", "vww01", "ic01", "ad01", "sww01")


@dataclass(frozen=True, slots=True)
class SynthResult:
    """What ``synth_dataset`` wrote for one dataset."""

    dataset: str
    folder: Path
    rows: int
    """Rows of the written ``y_labels.csv``."""
    alt_rows: int | None
    """Rows of the written ``y_labels_alt.csv``, or ``None`` when none was written."""
    files: int
    bytes: int


def stratified(n: int, seed: int) -> list[float]:
    """``n`` difficulties ``(i + 0.5) / n``, shuffled with ``seed``: an even spread over [0, 1)
    whose order carries no information about the label or the file."""
    us = [(i + 0.5) / n for i in range(n)]
    random.Random(seed).shuffle(us)
    return us


def _seed(*parts: str) -> int:
    # crc32, not hash(): str hashes are salted per process and the files must be reproducible.
    return zlib.crc32("/".join(parts).encode())


def difficulties(spec: DatasetSpec, indexes: Iterable[list[Row]]) -> dict[str, float]:
    """The ``u`` of every file named in ``indexes`` (the main index first).

    Classifiers: one even spread over all files (the top-1 of a board is then exact).
    ad01: an even spread per class; files of the alternative index (any index after the
    first) get theirs first, the remaining files another, so each set is evenly spread.
    """
    lists = list(indexes)
    if spec.window_bytes is None:
        files = _unique(row.file for rows in lists for row in rows)
        return dict(zip(files, stratified(len(files), _seed(spec.id)), strict=True))
    label_of = {row.file: row.label for rows in lists for row in rows}
    alt_files = set(_unique(row.file for rows in lists[1:] for row in rows))
    groups = [
        _unique(row.file for rows in lists[1:] for row in rows),
        _unique(row.file for row in (lists[0] if lists else []) if row.file not in alt_files),
    ]
    u: dict[str, float] = {}
    for g, files in enumerate(groups):
        for label in range(len(spec.classes)):
            members = [f for f in files if label_of[f] == label]
            u.update(
                zip(
                    members,
                    stratified(len(members), _seed(spec.id, str(g), str(label))),
                    strict=True,
                )
            )
    return u


def _unique(files: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(files))


def subset_index(
    dataset: str, limit: int | None, *, alt: bool = False, stratify: bool = False
) -> tuple[str, list[Row]]:
    """The text and rows of the index ``synth_dataset`` writes: the official one, or with
    ``limit`` its first ``limit`` rows, or with ``stratify`` too its
    :func:`farm.datasets.stratified_rows` (the official lines of the kept rows, round-robin
    across the classes, so a subset of any size holds every class)."""
    text = official_index(dataset, alt=alt)
    rows = official_rows(dataset, alt=alt)
    if limit is None:
        return text, rows
    lines = text.splitlines(keepends=True)  # the official index has no blank lines
    kept = stratified_rows(rows, limit) if stratify else rows[:limit]
    return "".join(lines[row.index] for row in kept), kept


def synth_dataset(
    out: Path | str,
    dataset: str,
    *,
    alt: bool = False,
    limit: int | None = None,
    stratify: bool = False,
    windows: int | None = None,
) -> SynthResult:
    """Write the stand-in dataset ``dataset`` (id or benchmark alias; ic02 -> ic01) under
    ``out``: ``out/<id>/y_labels.csv`` as shipped and every file it names.

    ``alt`` also writes ad01's ``y_labels_alt.csv`` (its files are a subset of the main
    set's). ``limit`` keeps ``limit`` rows of each index, the first ones or with
    ``stratify`` every class's first ones in turn (:func:`subset_index`): a subset for tests
    and demos, not the official set. ``windows`` (ad01 only) makes every
    file that many windows long instead of the official 196: an accuracy run over the subset
    then costs ``windows`` inferences per file.
    """
    spec = get_dataset_spec(dataset)
    if alt and not spec.has_alt:
        alt = False  # only ad01 has an alternative index; the others are complete without
    model = get_benchmark(spec.id).model
    folder = Path(out) / spec.id
    folder.mkdir(parents=True, exist_ok=True)

    indexes: list[tuple[str, str, list[Row]]] = []
    for name, is_alt in ((INDEX, False), (ALT_INDEX, True))[: 2 if alt else 1]:
        text, rows = subset_index(spec.id, limit, alt=is_alt, stratify=stratify)
        indexes.append((name, text, rows))
    file_bytes = spec.synth_file_bytes
    if windows is not None and spec.window_bytes is not None and spec.stride is not None:
        file_bytes = spec.window_bytes + (windows - 1) * spec.stride

    u = difficulties(spec, [rows for _, _, rows in indexes])
    label_of = {row.file: row.label for _, _, rows in indexes for row in rows}
    total = 0
    for file, difficulty in u.items():
        data = encode_input(
            model,
            label_of[file],
            difficulty,
            file_bytes=file_bytes,
            seed=_seed(spec.id, file),
        )
        (folder / file).write_bytes(data)
        total += len(data)
    # The index last: a folder with an index has all its files, even after an interruption.
    for name, text, _ in indexes:
        (folder / name).write_text(text)
    return SynthResult(
        dataset=spec.id,
        folder=folder,
        rows=len(indexes[0][2]),
        alt_rows=len(indexes[1][2]) if alt else None,
        files=len(u),
        bytes=total,
    )


def synthesize(
    out: Path | str,
    datasets: Iterable[str] = DEFAULT_DATASETS,
    *,
    alt: bool = False,
    limit: int | dict[str, int] | None = None,
    stratify: bool = False,
    windows: int | None = None,
) -> list[SynthResult]:
    """``synth_dataset`` for each of ``datasets`` (ids or aliases; ic02 shares ic01's
    folder, written once). ``limit`` is one for all or one per dataset id (a dataset not
    named is written whole). Unknown names raise ``BenchmarkError`` before anything is
    written.
    """
    ids = _unique(get_dataset_spec(d).id for d in datasets)
    limits = limit if isinstance(limit, dict) else dict.fromkeys(ids, limit)
    return [
        write_truth(out)
        if d == SWW_DATASET
        else synth_dataset(out, d, alt=alt, limit=limits.get(d), stratify=stratify, windows=windows)
        for d in ids
        if d in DATASETS
    ]


def write_truth(out: Path | str) -> SynthResult:
    """sww01's dataset: the official truth files, written to ``<out>/sww01/`` unchanged (no
    subset: a shorter stream is another truth file)."""
    folder = Path(out) / SWW_DATASET
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for name in OFFICIAL_TRUTH:
        text = official_text(name)
        (folder / name).write_text(text)
        total += len(text.encode())
    rows = len(official_truth(DATASETS[SWW_DATASET].index).entries)
    return SynthResult(SWW_DATASET, folder, rows, None, len(OFFICIAL_TRUTH), total)
