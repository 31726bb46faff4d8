"""How long a run should take, from the wire-time model: what a run job's timeout and the
sweep's queue estimates are built on (timeouts from the model, not constants:
docs/protocols.md#wire-time-model).

The estimate assumes the reference board's per-inference time (the slow NUCLEO-L4R5ZI), so
it is an upper bound for faster boards. A run job's deadline is built on it
(:mod:`controller.deadline`).
"""

from __future__ import annotations

import math
import os

from farm.catalog import Benchmark
from farm.messages import Mode, RunOptions
from farm.models import ENERGY_BAUD
from farm.protocol import dut as dut_proto
from farm.wire import wire_time

#: A health check, and a flash if the board holds other firmware (st-flash of a 1 MB image
#: and the re-enumeration take well under this). ``FARM_SETUP_ALLOWANCE_S`` sets it (a lab
#: whose boards never need a flash can bound its runs tighter).
SETUP_ALLOWANCE_S = float(os.environ.get("FARM_SETUP_ALLOWANCE_S", "120"))


def samples_expected(bench: Benchmark, mode: Mode, options: RunOptions) -> int:
    """Samples the run will produce (latency mode: its minimum query count)."""
    if mode == "latency":
        return options.limit or options.min_queries
    if mode in ("performance", "energy"):
        return min(options.windows, options.limit or options.windows)
    spec = bench.dataset
    rows = sum(spec.alt_class_counts) if options.alt and spec.alt_class_counts else spec.rows
    per_row = spec.synth_windows or 1
    return min(rows * per_row, options.limit or rows * per_row)


def sample_s(
    bench: Benchmark, mode: Mode, *, download: bool = True, baud: int | None = None
) -> float:
    """Wire and compute time of one sample at the reference board's speed (one inference;
    timed windows are added by :func:`estimate_run_s`); ``baud`` overrides the reference
    baud of a performance build."""
    model = bench.model
    if mode == "energy":
        baud = ENERGY_BAUD
    baud = baud or bench.baud("accuracy")
    sent = received = 0
    if download:
        chunks = math.ceil(model.input_bytes / 26)  # the smaller (interface) chunk: an upper bound
        sent = model.input_bytes * 2 + chunks * len("db %") + len(f"db load {model.input_bytes}%")
        received = 40 + chunks * len("m-ready\r\n")
    sent += len("infer 1 0%")
    received += dut_proto.reply_size_bound("infer", model.outputs)
    return wire_time(sent + received, baud) + model.reference_latency_s


def estimate_run_s(bench: Benchmark, mode: Mode, options: RunOptions) -> float:
    """The run's expected duration in seconds, set-up included."""
    count = samples_expected(bench, mode, options)
    if mode in ("performance", "energy"):
        window = min(options.min_window_s * 1.25, options.max_window_s * 0.9)
        calibration = options.calibration_s * 4 + sample_s(bench, mode)
        body = calibration + count * (window + sample_s(bench, mode))
    elif mode == "latency":
        body = max(options.min_duration_s, count * sample_s(bench, mode, download=False))
        body += options.latency_inputs * sample_s(bench, mode)
    else:
        body = count * sample_s(bench, mode)
    return SETUP_ALLOWANCE_S + body
