"""A user's test script file: checked against the catalogue, and given to runs.

``farm run --script FILE`` and ``farm submit --script [MODE=]FILE`` take a file in the
official runner's grammar (``farm.script_grammar``), one mode per file as the runner's
``tests_<mode>.yaml``. Each entry must fit its benchmark: a known id, the dataset folder the
benchmark reads, ``y_labels.csv`` (sww01: a truth file and a ``stream``), and in performance
and energy mode a loop of a fixed number of windows. A run of a benchmark the file names
takes that entry as written (``N`` too: the farm sizes ``N`` only in its own scripts); the
run records the file's name and digest, and ``log.txt`` the steps. Benchmarks the file does
not name run the farm's scripts; an sww01 entry outside energy mode (the official files have
one in every mode) is left out, as the farm streams sww01 in energy mode only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args

from pydantic import ValidationError

from farm.catalog import BENCHMARKS, Benchmark, BenchmarkError
from farm.messages import RunOptions, RunScript
from farm.script_grammar import Script, ScriptEntry, ScriptMode, ScriptSyntaxError
from farm.script_grammar import parse_script_file as _parse
from farm.yaml_config import ConfigError, read_yaml

#: Most windows a performance or energy script may loop over (``RunOptions.windows``).
MAX_WINDOWS = 100
#: A file or truth-file name a run can record (``RunScript.source``, ``RunOptions.truth``).
_NAME = re.compile(r"[^/\\%]{1,255}")


class ScriptError(ValueError):
    """A test script that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class TestScript:
    """One mode's test script file."""

    path: Path
    sha256: str
    mode: ScriptMode
    entries: dict[str, ScriptEntry]

    @property
    def name(self) -> str:
        """The file's name, as runs record it."""
        return self.path.name

    def for_benchmark(self, benchmark: str) -> RunScript | None:
        """The run form of the entry for ``benchmark`` (an id); ``None`` where the file has
        none."""
        entry = self.entries.get(benchmark)
        return None if entry is None else _run_form(self, entry.script)

    def apply(self, options: RunOptions, benchmark: str, mode: str) -> RunOptions:
        """``options`` for a ``mode`` run of ``benchmark`` under this file: unchanged in
        another mode or for a benchmark the file does not name. A performance or energy
        loop sets the run's windows; an sww01 stream names its truth file (a ``--truth``
        that names another is refused: :class:`ScriptError`)."""
        if mode != self.mode:
            return options
        entry = self.entries.get(benchmark)
        if entry is None:
            return options
        script = _run_form(self, entry.script)
        update: dict[str, object] = {"script": script}
        stream = entry.script.stream
        if stream is not None:
            if options.truth is not None and options.truth != stream:
                raise ScriptError(
                    f"{self.path}:{entry.line}: {benchmark} streams {stream}; --truth names "
                    f"{options.truth}"
                )
            update["truth"] = stream
        elif mode in ("performance", "energy") and script.loop is not None:
            update["windows"] = script.loop
        # Validated as a whole: what a run stores must read back.
        return RunOptions.model_validate({**options.model_dump(), **update})


def _run_form(script: TestScript, steps: Script) -> RunScript:
    return RunScript(
        source=script.name,
        sha256=script.sha256,
        loop=steps.loop,
        iterations=steps.iterations,
        warmups=steps.warmups,
        reset_s=steps.reset_s,
    )


def script_mode(path: Path, mode: str | None = None) -> ScriptMode:
    """The mode a script file serves: ``mode`` if given, else from its name
    (``tests_performance.yaml`` and the like)."""
    modes = get_args(ScriptMode)
    if mode is not None:
        if mode not in modes:
            raise ScriptError(f"{path}: unknown mode {mode!r} (scripts: {', '.join(modes)})")
        return cast(ScriptMode, mode)
    for known in modes:
        if path.stem.endswith(known):
            return cast(ScriptMode, known)
    raise ScriptError(
        f"{path}: say which mode it is for (MODE=FILE, e.g. performance={path.name}), or name "
        "it as the official runner does (tests_performance.yaml, tests_accuracy.yaml, "
        "tests_energy.yaml)"
    )


def load_test_script(path: str | Path, mode: str | None = None) -> TestScript:
    """Read and check a test script file for ``mode`` (default: from its name).

    Raises :class:`ScriptError` listing every problem with its file and line.
    """
    path = Path(path)
    script_for = script_mode(path, mode)
    if not _NAME.fullmatch(path.name):
        raise ScriptError(f"{path}: a run records the file's name: no '%' or '\\' in it")
    try:
        raw = path.read_bytes()  # the bytes parsed are the bytes the digest names
        data, node = read_yaml(path, raw)
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read: {exc.strerror}") from None
    except ConfigError as exc:
        raise ScriptError(str(exc)) from None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        entries = _parse(
            data,
            node,
            str(path),
            script_for,
            sized=False,
            source=f"{path.name} sha256:{digest}",
        )
    except ScriptSyntaxError as exc:
        raise ScriptError(str(exc)) from None
    # The official files give sww01 a script in every mode; the farm runs it in energy mode
    # only (one stream gives all its numbers), so its other entries have nothing to serve.
    entries = {
        key: entry
        for key, entry in entries.items()
        if not (key in BENCHMARKS and BENCHMARKS[key].streamed and script_for != "energy")
    }
    problems = [
        f"{path}:{entry.line}: {key}: {problem}"
        for key, entry in entries.items()
        if (problem := _misfit(key, entry, script_for)) is not None
    ]
    if problems:
        raise ScriptError("\n".join(problems))
    if not entries:
        raise ScriptError(f"{path}: the file names no benchmark")
    script = TestScript(path, digest, script_for, entries)
    for key, entry in entries.items():
        try:
            _run_form(script, entry.script)
        except ValidationError as exc:  # a bound _misfit does not know yet
            raise ScriptError(f"{path}:{entry.line}: {key}: {exc.errors()[0]['msg']}") from None
    return script


def _misfit(key: str, entry: ScriptEntry, mode: ScriptMode) -> str | None:
    """Why the entry cannot serve its benchmark in ``mode``; ``None`` when it can."""
    bench = BENCHMARKS.get(key)
    if bench is None:
        return f"not a benchmark id (known: {', '.join(sorted(BENCHMARKS))})"
    try:
        bench.script(mode)
    except BenchmarkError as exc:
        return str(exc)
    if entry.model != bench.dataset_id:
        return f"model is the dataset folder it reads: {bench.dataset_id}, not {entry.model}"
    script = entry.script
    if bench.streamed:
        if script.stream is None:
            return "sww01's script is a stream of its truth file"
        if not (entry.truth_file.endswith(".json") and _NAME.fullmatch(entry.truth_file)):
            return f"truth_file is a truth file in the sww01 folder, not {entry.truth_file!r}"
        return None
    if script.stream is not None:
        return f"{key} downloads its inputs; stream is sww01's"
    if entry.truth_file != "y_labels.csv":
        return (
            f"truth_file is y_labels.csv, not {entry.truth_file!r} (ad01's y_labels_alt.csv: "
            "the --alt option)"
        )
    if mode in ("performance", "energy") and not (
        script.loop is not None and 1 <= script.loop <= MAX_WINDOWS
    ):
        return (
            f"{mode} mode loops over a fixed number of windows, 1 to {MAX_WINDOWS} (the "
            "official runner reports ERROR 1 unless it is 5), not "
            + ("every file" if script.loop is None else str(script.loop))
        )
    if mode == "accuracy" and script.loop is not None and script.loop > bench.dataset.rows:
        return f"loop {script.loop}: {bench.dataset_id} has {bench.dataset.rows} files"
    return None


def run_script(
    bench: Benchmark, mode: str, script: RunScript | None, truth: str | None = None
) -> Script:
    """The script a ``mode`` run of ``bench`` follows: a user's, as written, or the farm's
    (latency mode: the performance one's inputs); ``truth`` is what an sww01 run streams."""
    script_mode = "performance" if mode == "latency" else mode
    default = bench.script(script_mode)
    if script is None or mode == "latency":
        return default
    return Script(
        default.mode,
        script.loop,
        script.iterations,
        script.warmups,
        script.reset_s,
        None if default.stream is None else truth or default.stream,
        sized=False,
        source=f"{script.source} sha256:{script.sha256}",
    )


def script_log_lines(bench: Benchmark, mode: str, script: Script) -> list[str]:
    """What ``log.txt`` records of the script a run followed: a user's, with its file and
    digest, or the farm's deviations from the shipped runner's scripts."""
    if script.source is not None:
        as_written = "" if script.stream is not None else " (N as written)"
        return [f"test script {script.source}: {script.text()}{as_written}"]
    return [
        f"deviation from the official script: {deviation}"
        for deviation in bench.deviations
        if deviation.startswith(f"{bench.id} {mode}")
    ]


def script_subset(mode: str, script: Script, rows: int) -> str | None:
    """Why a run is not valid for submission because its script covers part of the dataset
    (an accuracy ``loop K`` of fewer than its ``rows`` files); ``None`` otherwise."""
    if mode != "accuracy" or script.loop is None or script.loop >= rows:
        return None
    return (
        f"the test script runs {script.loop} of the {rows} files of the index: not valid for "
        "submission"
    )
