"""Benchmark (not a test): an accuracy run through ``farm run``'s code path against a raw-fd
floor and the wire + compute limit.

    python bench/run_accuracy.py [--models ad01 vww01] [--samples N] [--repeat K]
                                 [--median-s S] [--quality Q] [--dataset DIR]

For each model, a simulated board of that model runs in its own process
(``bench/sim_dut_process.py``, at the benchmark's accuracy-mode baud: ad01 921600, vww01
115200) and a stand-in dataset is synthesized (``farm.dataset_synth.synth_dataset``, only the
rows needed). Then, K times, alternating which path goes first:

* client: ``agent.one_board.run_one_board`` with ``mode="accuracy"`` and ``RunSettings(limit=N)``,
  exactly what ``farm run --mode accuracy --limit N`` calls (without its rich progress bar):
  dataset check, ``SerialLink`` + ``DirectChannel`` + ``DutClient``, ``resync`` and
  ``profile``, then ``Runner._accuracy`` (``DutClient.load`` + ``DutClient.infer(1, 0)`` per
  input, each sample appended to ``samples.jsonl``), then scoring and the output files.
* floor: ``os.open`` the pty, raw termios, and for the same N inputs ``os.write`` the same
  ``db load`` / ``db <hex>`` / ``infer 1 0`` commands, blocking ``os.read`` until
  ``m-ready\\r\\n`` (commands hex-encoded before the timed region; replies checked after it).

Timed region: the client's sample loop, from ``run_one_board``'s ``on_start`` callback (ports
open, DUT checked) to the progress callback of the N-th sample (its line written); the floor's
loop over the N inputs. The whole ``run_one_board`` call is timed too and reported apart.
Per path: wall s; the limit ``(bytes written + bytes read) * 10 / baud + simulated compute``
(bytes counted on the link / by ``os.write``/``os.read``; compute = the ``ComputeRecord``
totals the simulator recorded for that path's infers); wall ÷ limit; client ÷ floor; CPU s per
sample (``time.process_time``, user + sys, of this process) and CPU as % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from serial_link import (
    _SPEEDS,
    Sim,
    Totals,
    check_floor_replies,
    commands_for,
    compute_per_infer,
    floor_run,
    open_raw,
    start_sim,
    stop_sim,
)

from agent import one_board
from agent.one_board import RunRequest, run_one_board
from agent.runner import RunSettings
from agent.serial_link import SerialLink
from farm.catalog import get_benchmark, get_dataset_spec
from farm.dataset_synth import synth_dataset
from farm.datasets import load_dataset
from farm.run_output import RunFolder

#: Samples per model by default: each path takes roughly 30-60 s on the reference bauds.
DEFAULT_SAMPLES = {"ad01": 200, "vww01": 8}
RESULTS = re.compile(rb"m-results-\[([^\]]*)\]")


class _RecordingLink(SerialLink):
    """``SerialLink`` that remembers every instance, so the bench can read the byte counters
    of the link ``run_one_board`` opens for itself."""

    opened: list[SerialLink] = []  # noqa: RUF012 - deliberately shared by all instances

    def __init__(self, port: str, baud: int) -> None:
        super().__init__(port, baud)
        _RecordingLink.opened.append(self)


@dataclass
class ModelResult:
    model: str
    baud: int
    samples: int
    repeat: int
    median_s: float
    totals: dict[str, Totals] = field(
        default_factory=lambda: {"client": Totals(), "floor": Totals()}
    )
    whole_s: float = 0.0
    """Wall time of the whole ``run_one_board`` calls (open, check, loop, score, close)."""
    scores: list[str] = field(default_factory=list)


# --- the two paths ----------------------------------------------------------------------------


def client_rep(
    sim: Sim, model: str, baud: int, root: Path, out: Path, samples: int
) -> tuple[Totals, float, RunFolder]:
    """One ``run_one_board`` accuracy run of ``samples`` inputs; the sample loop timed."""
    marks: dict[str, tuple[float, float, int, int]] = {}

    def snapshot() -> tuple[float, float, int, int]:
        link = _RecordingLink.opened[-1]
        return time.perf_counter(), time.process_time(), link.bytes_out, link.bytes_in

    def on_start(folder: RunFolder, total: int | None) -> None:
        marks["start"] = snapshot()

    def progress(done: int, total: int | None, eta: float | None) -> None:
        if done == samples:
            marks["end"] = snapshot()

    request = RunRequest(
        benchmark=model,
        mode="accuracy",
        dataset=root,
        out=out,
        port=str(sim.path),
        baud=baud,
        settings=RunSettings(limit=samples),
    )
    _RecordingLink.opened.clear()
    t0 = time.perf_counter()
    with mock.patch.object(one_board, "SerialLink", _RecordingLink):
        folder = asyncio.run(run_one_board(request, progress=progress, on_start=on_start))
    whole = time.perf_counter() - t0
    (w0, c0, o0, i0), (w1, c1, o1, i1) = marks["start"], marks["end"]
    totals = Totals(wall_s=w1 - w0, cpu_s=c1 - c0, bytes_out=o1 - o0, bytes_in=i1 - i0)
    return totals, whole, folder


def floor_rep(sim: Sim, baud: int, payloads: list[list[bytes]]) -> tuple[Totals, list[bytes]]:
    """The same downloads and ``infer 1 0`` over a blocking raw fd; returns the infer replies."""
    fd = open_raw(sim.path, baud)
    lasts: list[list[bytes]] = []
    totals = Totals()
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        for commands in payloads:
            n_out, n_in, last = floor_run(fd, commands)
            totals.bytes_out += n_out
            totals.bytes_in += n_in
            lasts.append(last)
        t1, cpu1 = time.perf_counter(), time.process_time()
    finally:
        os.close(fd)
    totals.wall_s, totals.cpu_s = t1 - t0, cpu1 - cpu0
    for last in lasts:
        check_floor_replies(last)
    return totals, [last[-1] for last in lasts]


def parse_results(reply: bytes) -> tuple[float, ...]:
    found = RESULTS.search(reply)
    if found is None:
        raise RuntimeError(f"floor: no results in {reply!r}")
    return tuple(float(v) for v in found.group(1).split(b",") if v)


# --- one model --------------------------------------------------------------------------------


def bench_model(
    model: str,
    samples: int,
    repeat: int,
    median_s: float,
    quality: float,
    seed: int,
    dataset: Path | None,
    tmp: Path,
) -> ModelResult:
    bench = get_benchmark(model)
    baud = bench.baud("accuracy")
    if baud not in _SPEEDS:
        raise SystemExit(f"{model}: no termios speed for {baud} baud")
    root = dataset
    if root is None:
        root = tmp / "datasets"
        spec = get_dataset_spec(model)
        rows = math.ceil(samples / (spec.synth_windows or 1))
        synth_dataset(root, model, limit=rows)
    inputs = load_dataset(root, bench).inputs("accuracy", limit=samples)
    if len(inputs) < samples:
        raise SystemExit(f"{model}: the dataset has only {len(inputs)} accuracy inputs")
    payloads = [commands_for(item.read()) for item in inputs]
    result = ModelResult(model, baud, samples, repeat, median_s)
    owners: list[str] = []  # which path sent each block of `samples` infers, in order
    client_results: list[list[tuple[float, ...]]] = []
    floor_results: list[list[tuple[float, ...]]] = []
    sim = start_sim(tmp, model, baud, median_s, seed, quality)
    try:
        for rep in range(repeat):
            order = ("client", "floor") if rep % 2 == 0 else ("floor", "client")
            for who in order:
                if who == "client":
                    out = tmp / "runs" / f"{model}-{rep}"
                    totals, whole, folder = client_rep(sim, model, baud, root, out, samples)
                    result.whole_s += whole
                    client_results.append([s.results for s in folder.samples])
                    result.scores.append(_score_lines(folder))
                else:
                    totals, replies = floor_rep(sim, baud, payloads)
                    floor_results.append([parse_results(r) for r in replies])
                owners.append(who)
                t = result.totals[who]
                for name in ("wall_s", "cpu_s", "bytes_out", "bytes_in"):
                    setattr(t, name, getattr(t, name) + getattr(totals, name))
                print(
                    f"  {model}: rep {rep + 1}/{repeat} {who} {totals.wall_s:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        records = stop_sim(sim)
    computes = compute_per_infer(records)
    if len(computes) != samples * len(owners):
        raise RuntimeError(f"{len(computes)} infer records for {samples * len(owners)} infers")
    for block, who in enumerate(owners):
        result.totals[who].compute_us += sum(computes[block * samples : (block + 1) * samples])
        result.totals[who].infers += samples
    # Both paths sent the same inputs to a deterministic board: the same results come back.
    for got in (*client_results, *floor_results[1:]):
        if got != floor_results[0]:
            raise RuntimeError(f"{model}: the paths got different result vectors")
    return result


def _score_lines(folder: RunFolder) -> str:
    text = (folder.path / "results.txt").read_text()
    lines = [ln.split("ulp-mlperf: ")[-1] for ln in text.splitlines() if "ulp-mlperf: " in ln]
    return ", ".join(ln.strip() for ln in lines if ln.startswith(("Top 1%", "AUC")))


# --- report -----------------------------------------------------------------------------------


def report(result: ModelResult) -> None:
    c, f = result.totals["client"], result.totals["floor"]
    n = result.samples * result.repeat
    setup = result.whole_s - c.wall_s
    print(
        f"\n{result.model} at {result.baud} baud, {result.samples} samples x K={result.repeat}, "
        f"simulated median inference {result.median_s * 1e3:g} ms: per sample "
        f"{c.bytes_out / n:.0f} B written, {c.bytes_in / n:.0f} B read (client) / "
        f"{f.bytes_in / n:.0f} B read (floor); simulated compute {c.compute_us / n / 1e3:.2f} ms "
        f"(client) / {f.compute_us / n / 1e3:.2f} ms (floor)"
    )
    print(
        f"whole run_one_board: {result.whole_s:.2f} s, of which {setup:.2f} s outside the sample "
        f"loop over {result.repeat} run(s) (open, resync, profile, scoring, output files, close)"
    )
    for line in dict.fromkeys(result.scores):
        print(f"results.txt (subset, sanity only): {line}")
    floor_ratio = f.wall_s / f.modelled_s(result.baud)
    head = ("model", "baud", "path", "samples", "wall s", "wire+compute s", "wall÷limit",
            "client÷floor", "CPU s/sample", "CPU % core")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for who, t in result.totals.items():
        limit = t.modelled_s(result.baud)
        ratio = t.wall_s / limit
        rel = f"{ratio / floor_ratio:.3f}" if who == "client" else "1"
        cpu = (f"{t.cpu_s / n:.4f}", f"{100 * t.cpu_s / t.wall_s:.2f}")
        cells = (result.model, str(result.baud), who, str(n), f"{t.wall_s:.2f}",
                 f"{limit:.2f}", f"{ratio:.3f}", rel, *cpu)  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_SAMPLES),
                        choices=sorted(DEFAULT_SAMPLES))  # fmt: skip
    parser.add_argument(
        "--samples", type=int, metavar="N",
        help="samples per model and path (default: ad01 200 windows, vww01 8 files)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, metavar="K")
    parser.add_argument(
        "--median-s", type=float,
        help="simulated median inference time (default: the model's reference-board latency)",
    )  # fmt: skip
    parser.add_argument("--quality", type=float, default=0.9, help="simulated accuracy / AUC")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--dataset", type=Path, help="dataset root to use (default: synthesize the rows needed)"
    )
    args = parser.parse_args(argv)
    load0 = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        for i, model in enumerate(args.models):
            samples = args.samples or DEFAULT_SAMPLES[model]
            median_s = args.median_s or get_benchmark(model).model.reference_latency_s
            seed, root = args.seed + i, args.dataset
            run = (model, samples, args.repeat, median_s, args.quality, seed, root, Path(tmp))
            results.append(bench_model(*run))
    for result in results:
        report(result)
    load1 = os.getloadavg()
    print(f"\nload average (1/5/15 min): before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
          f"after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
