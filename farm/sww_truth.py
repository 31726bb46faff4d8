"""Streaming-wakeword (sww01) truth files: which wav files the interface board plays and when
the wakeword is spoken in each (docs/measurement.md#sww-truth).

A truth file is a JSON list of entries ``{"wav_file", "detection_windows": [[start_s,
end_s], ...], "length_sec", "sample_rate"}``; the official runner reads
``<dataset root>/sww01/<truth file>`` and streams each entry's wav. The three official files
ship with the package (``farm/data/sww``, from mlcommons/tiny, Apache-2.0);
:func:`official_truth` returns them. :func:`load_truth` validates a file and raises
:class:`TruthError` naming the file and the entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DATASET_ID = "sww01"
#: The official runner's truth file for every mode (the 1200 s wav with 50 wakewords).
LONG_TRUTH = "sww_long_test.json"
OFFICIAL_TRUTH = (LONG_TRUTH, "sww_med_test.json", "sww_short_test.json")
#: What a wav on the board is when a truth entry does not say.
DEFAULT_SAMPLE_RATE = 16_000
#: The longest wav a truth entry may name (six times the official long one): one stream is
#: one sample record, whose activations (at most 8 bytes of JSON a 32 ms frame: 1.8 MB)
#: must fit one message, and whose power trace (1 kHz: 7.2 M samples) the agent holds in
#: memory and sends in chunks (``farm.trace``).
MAX_LENGTH_S = 7200.0


class TruthError(ValueError):
    """A truth file cannot be used; the message names the file (and entry) and says why."""


@dataclass(frozen=True, slots=True)
class TruthEntry:
    """One wav file of a truth file."""

    index: int
    """Position in the truth file (0-based): a run's sample ``index``."""
    wav_file: str
    windows: tuple[tuple[float, float], ...]
    """``(start_s, end_s)`` of every wakeword, seconds from the start of the wav, in the
    file's order (the order the official scoring walks them)."""
    length_s: float
    sample_rate: int

    def truth(self) -> dict[str, Any]:
        """The entry as the official runner's results.json ``infer`` object starts."""
        return {
            "wav_file": self.wav_file,
            "detection_windows": [list(w) for w in self.windows],
            "length_sec": self.length_s,
            "sample_rate": self.sample_rate,
        }


@dataclass(frozen=True, slots=True)
class TruthFile:
    """A validated truth file."""

    name: str
    """The file's name (``sww_long_test.json``): what a run records."""
    entries: tuple[TruthEntry, ...]
    path: Path | None = None
    """Where it was read from (``None``: parsed from text, or the package's copy)."""

    @property
    def index_path(self) -> Path:
        """The file itself, as a dataset's index (the package's copy by its package path)."""
        return self.path if self.path is not None else Path("farm/data/sww") / self.name

    @property
    def folder(self) -> Path:
        """The dataset folder it is in (``<root>/sww01``)."""
        return self.index_path.parent

    @property
    def rows(self) -> tuple[TruthEntry, ...]:
        """Its entries, numbered as a run's samples are (``index``)."""
        return self.entries

    @property
    def official(self) -> bool:
        """True if it is, entry for entry, the shipped official file of the same name."""
        return self.name in OFFICIAL_TRUTH and official_truth(self.name).entries == self.entries

    def entry(self, wav_file: str) -> TruthEntry:
        """The entry of ``wav_file``; ``KeyError`` naming the known files otherwise."""
        for e in self.entries:
            if e.wav_file == wav_file:
                return e
        known = ", ".join(e.wav_file for e in self.entries)
        raise KeyError(f"{self.name} has no entry for {wav_file!r} (it lists {known})")


def parse_truth(text: str, name: str, source: str | None = None) -> TruthFile:
    """Parse a truth file's text; ``source`` (default ``name``) names it in messages."""
    where = source or name
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TruthError(f"{where}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(document, list) or not document:
        raise TruthError(f"{where}: expected a non-empty JSON list of wav entries")
    entries = tuple(_entry(item, i, where) for i, item in enumerate(document))
    seen: set[str] = set()
    for e in entries:
        if e.wav_file in seen:
            raise TruthError(f"{where}: entry {e.index}: {e.wav_file} is listed twice")
        seen.add(e.wav_file)
    return TruthFile(name, entries)


def _entry(item: object, index: int, where: str) -> TruthEntry:
    at = f"{where}: entry {index}"
    if not isinstance(item, Mapping):
        raise TruthError(f"{at}: expected an object, got {type(item).__name__}")
    missing = [k for k in ("wav_file", "detection_windows", "length_sec") if k not in item]
    if missing:
        raise TruthError(f"{at}: missing {', '.join(missing)}")
    wav = item["wav_file"]
    if not isinstance(wav, str) or not wav or "/" in wav or "%" in wav or not wav.isprintable():
        raise TruthError(f"{at}: wav_file {wav!r} is not a plain file name")
    length = _number(item["length_sec"], f"{at}: length_sec")
    if not 0 < length <= MAX_LENGTH_S:
        raise TruthError(
            f"{at}: length_sec must be positive and at most {MAX_LENGTH_S:g}, got {length}"
        )
    rate = item.get("sample_rate", DEFAULT_SAMPLE_RATE)
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise TruthError(f"{at}: sample_rate must be a positive integer, got {rate!r}")
    raw = item["detection_windows"]
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise TruthError(f"{at}: detection_windows must be a list of [start, end] pairs")
    windows: list[tuple[float, float]] = []
    for k, pair in enumerate(raw):
        here = f"{at}: detection_windows[{k}]"
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise TruthError(f"{here}: expected [start, end], got {pair!r}")
        start, end = _number(pair[0], here), _number(pair[1], here)
        if not 0 <= start <= end <= length:
            raise TruthError(f"{here}: [{start}, {end}] is not inside [0, {length}] in order")
        windows.append((start, end))
    return TruthEntry(index, wav, tuple(windows), length, rate)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TruthError(f"{where}: {value!r} is not a finite number")
    return float(value)


def load_truth(path: Path | str) -> TruthFile:
    """Read and validate the truth file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TruthError(f"{path}: no such truth file") from None
    except OSError as exc:
        raise TruthError(f"{path}: cannot read: {exc.strerror}") from None
    truth = parse_truth(text, path.name, str(path))
    return TruthFile(truth.name, truth.entries, path)


def official_text(name: str = LONG_TRUTH) -> str:
    """The text of a shipped official truth file (``sww_long_test.json``,
    ``sww_med_test.json``, ``sww_short_test.json``), byte for byte."""
    if name not in OFFICIAL_TRUTH:
        raise TruthError(f"{name!r} is not an official truth file ({', '.join(OFFICIAL_TRUTH)})")
    return (resources.files("farm") / "data" / "sww" / name).read_text()


def official_truth(name: str = LONG_TRUTH) -> TruthFile:
    """A shipped official truth file, parsed (see :func:`official_text`)."""
    return parse_truth(official_text(name), name, f"farm/data/sww/{name}")


def dataset_truth(root: Path | str, name: str = LONG_TRUTH) -> TruthFile:
    """The truth file ``<root>/sww01/<name>`` of a dataset root, as the official runner
    finds it; a missing folder or file is a :class:`TruthError` saying where it looked."""
    root = Path(root)
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise TruthError(f"truth file {name!r} is not a plain file name")
    if not root.is_dir():
        raise TruthError(f"dataset folder {root} does not exist")
    folder = root / DATASET_ID
    if not folder.is_dir():
        raise TruthError(
            f"no {DATASET_ID} folder in {root} (expected {folder / name}; `farm dataset synth "
            f"--models sww` writes the official truth files)"
        )
    return load_truth(folder / name)
