"""One simulated DUT on a pty, in its own process, for benchmarks.

    python bench/sim_dut_process.py --path /tmp/x/dut --baud 115200 --model vww01 \
        --records /tmp/x/records.json [--median-s 0.005] [--quality 0.9] [--seed 0]

Runs a :class:`farm.sim.dut.SimDut` (performance build, no faults; ``--median-s`` sets its
latency model's median inference time, ``--quality`` the top-1 accuracy or AUC it reaches on
synthetic inputs, as ``SimDut.quality``) behind a
:class:`farm.sim.pty_port.PtyPort` whose symlink is ``--path``. Once the boot banner has left
the wire it prints ``ready <path>`` on stdout, so the parent opens the port only after the
banner (nothing unsolicited is then pending). On SIGTERM or SIGINT it stops the firmware,
closes the pty (removing the symlink) and writes every compute record it simulated to
``--records`` as JSON, in order: ``{"records": [{"phase", "count", "times_us", "total_us"}]}``.
Running in a separate process keeps the simulator's CPU out of the client's measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from farm.models import MODELS
from farm.sim.dut import SimDut
from farm.sim.latency import LatencyModel
from farm.sim.pty_port import PtyPort


def _write_records(path: Path, dut: SimDut) -> None:
    records = [
        {
            "phase": r.phase,
            "count": r.count,
            "times_us": list(r.times_us),
            "total_us": r.total_us,
        }
        for r in dut.records
    ]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"model": dut.model.id, "records": records}))
    os.replace(tmp, path)  # the reader never sees a half-written file


async def serve(
    path: Path,
    baud: int,
    model: str,
    records: Path,
    median_s: float,
    seed: int,
    quality: float = 0.9,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = PtyPort(path, baud)
    dut = SimDut(
        board=f"bench-{model}",
        model=MODELS[model],
        build="performance",
        uart=port,
        latency=LatencyModel(median_s=median_s, seed=seed),
        quality=quality,
    )
    try:
        await port.start()
        await dut.start()
        # Ready once the firmware accepts commands and its banner has left the wire.
        while not dut.firmware.parser_enabled or port.tx_free_at > loop.time():
            if stop.is_set():
                break
            await asyncio.sleep(0.005)
        print(f"ready {path}", flush=True)
        await stop.wait()
    finally:
        await dut.stop()
        await port.close()
        _write_records(records, dut)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, required=True, help="symlink to create for the pty")
    parser.add_argument("--baud", type=int, required=True)
    parser.add_argument("--model", default="vww01", choices=sorted(MODELS))
    parser.add_argument("--records", type=Path, required=True, help="JSON file written on exit")
    parser.add_argument("--median-s", type=float, default=0.005, help="median inference time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quality", type=float, default=0.9, help="top-1 accuracy or AUC on synthetic inputs"
    )
    args = parser.parse_args(argv)
    return asyncio.run(
        serve(
            args.path,
            args.baud,
            args.model,
            args.records,
            args.median_s,
            args.seed,
            args.quality,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
