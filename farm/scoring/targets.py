"""Closed-division quality targets per MLPerf Tiny checker version and the checker's rule that
the PRINTED, rounded value is compared (docs/measurement.md#accuracy-targets)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from farm.catalog import BENCHMARKS, VERSIONS, Benchmark

Metric = Literal["top1", "auc", "sww"]

#: Runner model id -> the results/<system>/<model> directory name the checker knows.
MODEL_DIRS: dict[str, str] = {
    "kws01": "kws",
    "vww01": "vww",
    "ic01": "ic",
    "ic02": "ic2",
    "ad01": "ad",
    "sww01": "sww",
}


@dataclass(frozen=True, slots=True)
class Target:
    """One model's accuracy requirement in one checker version."""

    model: str
    """Checker directory name (kws, vww, ic, ic2, ad, sww)."""
    metric: Metric
    threshold: float | None
    """Top-1 percent or AUC to reach (>=); None for sww, which is judged on FP/FN counts."""
    max_false_positives: int | None = None
    max_false_negatives: int | None = None
    required_windows: int | None = None
    """sww: TP + FN must equal the truth windows of the long file."""


#: sww01 (v1.3 on): TP + FN must equal the wakewords of the official long file.
SWW_TRUTH_WINDOWS = 50


def _target(bench: Benchmark, version: str) -> Target:
    threshold = bench.targets[version]
    if bench.metric != "sww":
        return Target(bench.checker_dir, bench.metric, threshold)
    # sww01 is judged on detection counts: at most ``threshold`` of each kind of error.
    limit = int(threshold)
    return Target(
        bench.checker_dir,
        "sww",
        None,
        max_false_positives=limit,
        max_false_negatives=limit,
        required_windows=SWW_TRUTH_WINDOWS,
    )


def _table(version: str) -> dict[str, Target]:
    """The thresholds of ``version``, from the benchmark catalogue (their one home)."""
    return {b.checker_dir: _target(b, version) for b in BENCHMARKS.values() if version in b.targets}


TARGETS: dict[str, dict[str, Target]] = {v: _table(v) for v in VERSIONS}
DEFAULT_VERSION = "v1.4"


def accuracy_target(model: str, version: str = DEFAULT_VERSION) -> Target:
    """The target of ``model`` (runner id like ``kws01`` or checker name like ``kws``) in a
    checker ``version``; ``KeyError`` with the known names otherwise."""
    if version not in TARGETS:
        raise KeyError(f"unknown MLPerf Tiny version {version!r} (known: {', '.join(TARGETS)})")
    name = MODEL_DIRS.get(model, model)
    table = TARGETS[version]
    if name not in table:
        raise KeyError(f"{model!r} has no target in {version} (models: {', '.join(table)})")
    return table[name]


def printed_value(metric: Metric, value: float) -> str:
    """The value as the runner prints it: top-1 ``{x:2.1f}`` (same as ``%.1f``), AUC
    ``%.3f``. Python rounds the exact binary double, so 89.95 (stored as 89.9500000000000028)
    prints 90.0 while 89.85 (89.8499999999999943) prints 89.8."""
    if metric == "top1":
        return f"{value:2.1f}"
    if metric == "auc":
        return f"{value:.3f}"
    raise ValueError(f"no printed form for metric {metric!r}")


_CHECKER_NUMBER = re.compile(r"[0-9.]+")


def checker_capture(printed: str) -> float | None:
    """The number the checker's ``[0-9.]+`` capture reads from a printed value, or None when
    it matches nothing (``nan``, ``inf``, a sign) and the result has no accuracy."""
    if not _CHECKER_NUMBER.fullmatch(printed):
        return None
    try:
        return float(printed)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """The checker's verdict on one accuracy value."""

    target: Target
    version: str
    value: float
    printed: str
    captured: float | None
    passed: bool


def check_accuracy_target(model: str, value: float, version: str = DEFAULT_VERSION) -> TargetCheck:
    """Predict the checker: print ``value`` as the runner does, capture it as the checker
    does, pass iff the captured number >= the target (closed division)."""
    target = accuracy_target(model, version)
    if target.metric == "sww" or target.threshold is None:
        raise ValueError("sww is judged on detection counts: use check_sww_target")
    printed = printed_value(target.metric, value)
    captured = checker_capture(printed)
    passed = captured is not None and captured >= target.threshold
    return TargetCheck(target, version, value, printed, captured, passed)


def check_sww_target(
    true_positives: int,
    false_negatives: int,
    false_positives: int,
    version: str = DEFAULT_VERSION,
) -> bool:
    """sww (v1.3+): FP <= 8 and FN <= 8, and TP + FN equal to the 50 truth windows."""
    target = accuracy_target("sww", version)
    assert target.max_false_positives is not None and target.max_false_negatives is not None
    return (
        true_positives + false_negatives == target.required_windows
        and false_positives <= target.max_false_positives
        and false_negatives <= target.max_false_negatives
    )
