"""Scoring: every number of an MLPerf Tiny run, computed exactly as the official runner,
checker and final report compute it, plus supplemental LoadGen
latency statistics.

Pure functions and frozen results: no I/O, no asyncio; ``farm run`` next to one board and
the controller call the same code. Importing this package needs only the standard library;
the AUC (:func:`roc_auc`, ``score_accuracy(with_auc=True)``) imports numpy and scikit-learn
when first used (``pip install 'tinyfarm[scoring]'``).
"""

from farm.scoring.accuracy import (
    AccuracyResult,
    FileScore,
    ad_thresholds,
    ad_top1_quirk,
    normalise,
    roc_auc,
    score_accuracy,
    top1_percent,
)
from farm.scoring.early_stop import (
    EarlyStopping,
    LoadGenMinPassingFinder,
    early_stopping,
    early_stopping_odds,
    min_passing_queries,
    regularized_incomplete_beta,
)
from farm.scoring.energy import (
    EnergyEventError,
    EnergyResult,
    EnergyWindow,
    energy_window,
    score_energy,
)
from farm.scoring.loadgen import (
    PERCENTILES,
    SUPPLEMENTAL_NOTE,
    LatencySummary,
    latency_json,
    latency_lines,
    latency_summary,
    loadgen_percentile,
    loadgen_summary_text,
    percentile_index,
    percentile_label,
    us_to_ns,
)
from farm.scoring.performance import (
    LAP_MODULUS,
    PerformanceResult,
    PerfWindow,
    perf_window,
    perf_window_from_elapsed,
    perf_window_from_laps,
    runner_throughput,
    score_performance,
    wrap_corrected_elapsed_us,
)
from farm.scoring.targets import (
    MODEL_DIRS,
    TARGETS,
    Target,
    TargetCheck,
    accuracy_target,
    check_accuracy_target,
    check_sww_target,
    checker_capture,
    printed_value,
)

__all__ = [
    "LAP_MODULUS",
    "MODEL_DIRS",
    "PERCENTILES",
    "SUPPLEMENTAL_NOTE",
    "TARGETS",
    "AccuracyResult",
    "EarlyStopping",
    "EnergyEventError",
    "EnergyResult",
    "EnergyWindow",
    "FileScore",
    "LatencySummary",
    "LoadGenMinPassingFinder",
    "PerfWindow",
    "PerformanceResult",
    "Target",
    "TargetCheck",
    "accuracy_target",
    "ad_thresholds",
    "ad_top1_quirk",
    "check_accuracy_target",
    "check_sww_target",
    "checker_capture",
    "early_stopping",
    "early_stopping_odds",
    "energy_window",
    "latency_json",
    "latency_lines",
    "latency_summary",
    "loadgen_percentile",
    "loadgen_summary_text",
    "min_passing_queries",
    "normalise",
    "percentile_index",
    "percentile_label",
    "perf_window",
    "perf_window_from_elapsed",
    "perf_window_from_laps",
    "printed_value",
    "regularized_incomplete_beta",
    "roc_auc",
    "runner_throughput",
    "score_accuracy",
    "score_energy",
    "score_performance",
    "top1_percent",
    "us_to_ns",
    "wrap_corrected_elapsed_us",
]
