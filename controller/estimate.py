"""How long a run should take, from the wire-time model: what a run job's timeout and the
sweep's queue estimates are built on (timeouts from the model, not constants:
docs/protocols.md#wire-time-model); and how long a board's health check may take, what the
controller's wait for one is built on (:func:`health_check_s`).

The estimate assumes the reference board's per-inference time (the slow NUCLEO-L4R5ZI), so
it is an upper bound for faster boards. A run job's deadline is built on it
(:mod:`controller.deadline`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from farm.board_timing import check_bauds, check_s
from farm.catalog import Benchmark
from farm.messages import Mode, RunOptions
from farm.models import ENERGY_BAUD
from farm.protocol import dut as dut_proto
from farm.protocol import sww
from farm.sww_truth import LONG_TRUTH, OFFICIAL_TRUTH, official_truth
from farm.wire import wire_time

#: A health check, and a flash if the board holds other firmware (st-flash of a 1 MB image
#: and the re-enumeration take well under this). ``FARM_SETUP_ALLOWANCE_S`` sets it (a lab
#: whose boards never need a flash can bound its runs tighter).
SETUP_ALLOWANCE_S = float(os.environ.get("FARM_SETUP_ALLOWANCE_S", "120"))
#: How much slower than the reference board a board may be and still run a user's test
#: script (N as written) within its estimate.
SCRIPT_SLOWDOWN = 4.0
#: JSON bytes a second of power trace takes at most: 1 kHz monitor samples, a full-precision
#: double and its comma each.
TRACE_BYTES_PER_S = 1000 * 24
#: How fast an agent's trace reaches Redis after the stream, conservatively: a Pi on Wi-Fi,
#: the broker, ingest's writes (``farm.trace``: 27 MB for the official 1,200 s stream).
UPLOAD_BYTES_PER_S = 1_000_000


def samples_expected(bench: Benchmark, mode: Mode, options: RunOptions) -> int:
    """Samples the run will produce (latency mode: its minimum query count; sww01: one)."""
    if bench.streamed:
        return 1
    if mode == "latency":
        return options.limit or options.min_queries
    if mode in ("performance", "energy"):
        return min(options.windows, options.limit or options.windows)
    spec = bench.dataset
    rows = sum(spec.alt_class_counts) if options.alt and spec.alt_class_counts else spec.rows
    if options.script is not None and options.script.loop is not None:
        rows = min(rows, options.script.loop)  # a user's accuracy script: its first K rows
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
        baud = bench.baud("energy")
    baud = baud or bench.baud("accuracy")
    sent = received = 0
    if download:
        chunks = math.ceil(model.input_bytes / 26)  # the smaller (interface) chunk: an upper bound
        sent = model.input_bytes * 2 + chunks * len("db %") + len(f"db load {model.input_bytes}%")
        received = 40 + chunks * len("m-ready\r\n")
    sent += len("infer 1 0%")
    received += dut_proto.reply_size_bound("infer", model.outputs)
    return wire_time(sent + received, baud) + model.reference_latency_s


def stream_s(bench: Benchmark, options: RunOptions) -> float:
    """sww01's stream: the wav (the official file's length; a truth file the controller does
    not have is taken as long as the long one), the runner's margins around ``play``, the
    activation dump and the board's logs over the wire, and the power trace's upload."""
    name = options.truth or LONG_TRUTH
    length = official_truth(name if name in OFFICIAL_TRUTH else LONG_TRUTH).entries[0].length_s
    frames = length / sww.FRAME_S
    dump = frames * len("-128, ") * 2  # DUT to board, then board to host
    logs = sww.MAX_DUTY_EDGES * 2 * len("4294967295, ") + 400
    upload = (length + sww.PLAY_MARGIN_S) * TRACE_BYTES_PER_S / UPLOAD_BYTES_PER_S
    played = length + sww.PLAY_MARGIN_S + sww.STOP_DELAY_S
    return played + wire_time(dump + logs, bench.baud("energy")) + upload


def estimate_run_s(bench: Benchmark, mode: Mode, options: RunOptions) -> float:
    """The run's expected duration in seconds, set-up included."""
    if bench.streamed:
        return SETUP_ALLOWANCE_S + stream_s(bench, options)
    count = samples_expected(bench, mode, options)
    script = options.script if mode != "latency" else None
    # A user's script runs N as written: what N takes on a board SCRIPT_SLOWDOWN times
    # slower than the reference one (the farm's own windows last a fixed time instead).
    per = bench.model.reference_latency_s * SCRIPT_SLOWDOWN
    extra_s = 0.0 if script is None else script.warmups * per
    if mode in ("performance", "energy"):
        window = min(options.min_window_s * 1.25, options.max_window_s * 0.9)
        if script is not None:
            window = script.iterations * per + extra_s
        calibration = options.calibration_s * 4 + sample_s(bench, mode)
        body = calibration + count * (window + sample_s(bench, mode))
    elif mode == "latency":
        body = max(options.min_duration_s, count * sample_s(bench, mode, download=False))
        body += options.latency_inputs * sample_s(bench, mode)
    else:
        one = sample_s(bench, mode)
        if script is not None:
            one += (script.iterations - 1) * per + extra_s
        body = count * one
    return SETUP_ALLOWANCE_S + body


def health_check_s(status: Mapping[str, Any]) -> float:
    """The longest the agent's health check of a board of this status (as ingest stores it)
    may take by its own timeouts (:func:`farm.board_timing.check_s`): every baud the status
    lists for the DUT's own port and, for a board wired for energy, the way through the
    interface board at its DUT-side baud. A status from an agent that lists no bauds counts
    every model's reference rate, and an energy baud it does not give as the slowest (9600).
    """
    bauds = [int(b) for b in status.get("bauds") or []] or check_bauds()
    energy_baud = None
    if status.get("energy"):
        energy_baud = int(status.get("energy_baud") or ENERGY_BAUD)
    return check_s(bauds, energy_baud)
