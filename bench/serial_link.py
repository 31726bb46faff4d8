"""Benchmark (not a test): tinyfarm's DUT client against a raw-fd floor and the wire-time model.

    python bench/serial_link.py [--repeat K] [--bauds 115200 921600] [--median-s 0.005]

At each baud, K times: load a 2,560-byte input then ``infer 1 0`` on a simulated ad01 DUT, and
load a 27,648-byte input then ``infer 1 0`` on a simulated vww01 DUT (the vww01 firmware would
refuse to infer on a 2,560-byte input, so each size goes to a board of its own model). Each
simulator is a separate process (``bench/sim_dut_process.py``), so its CPU is not counted here.

Two host paths run the identical byte sequence, interleaved rep by rep (alternating which goes
first), over their own port to the same simulators:

* client: ``DutClient.load`` + ``DutClient.infer`` over ``DirectChannel`` / ``SerialLink``;
* floor:  ``os.open`` the pty, raw termios, ``os.write`` each command, blocking ``os.read``
  until ``m-ready\\r\\n``: no asyncio, no parsing (replies are checked after timing).

For each it prints wall time, the modelled time ``(bytes written + bytes read) * 10 / baud +
simulated compute`` (compute = sum of the ``ComputeRecord.total_us`` the simulators recorded
for that path's inferences), their ratio, client ÷ floor (of the ratios), CPU s per MB moved
and CPU as a percentage of one core over the wall time. Port open/close is not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.dut_client import DIRECT_CHUNK, DirectChannel, DutClient
from agent.serial_link import SerialLink
from farm.models import MODELS

SIM_SCRIPT = Path(__file__).with_name("sim_dut_process.py")
READY = b"m-ready\r\n"
#: (model of the simulated board, bytes loaded on it), in the order each rep runs them.
CASES = (("ad01", 2560), ("vww01", 27648))
_SPEEDS = {115200: termios.B115200, 230400: termios.B230400, 460800: termios.B460800,
           921600: termios.B921600}  # fmt: skip


@dataclass
class Totals:
    """One path's sums over all reps at one baud."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    bytes_out: int = 0
    bytes_in: int = 0
    compute_us: int = 0
    infers: int = 0

    def modelled_s(self, baud: int) -> float:
        return (self.bytes_out + self.bytes_in) * 10 / baud + self.compute_us / 1e6

    @property
    def mb(self) -> float:
        return (self.bytes_out + self.bytes_in) / 1e6


# --- simulators -------------------------------------------------------------------------------


@dataclass
class Sim:
    model: str
    path: Path
    records: Path
    proc: subprocess.Popen[str]


def start_sim(
    directory: Path, model: str, baud: int, median_s: float, seed: int, quality: float = 0.9
) -> Sim:
    path, records = directory / f"{model}.pty", directory / f"{model}.records.json"
    cmd = [sys.executable, str(SIM_SCRIPT), "--path", str(path), "--baud", str(baud),
           "--model", model, "--records", str(records), "--median-s", str(median_s),
           "--seed", str(seed), "--quality", str(quality)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    sim = Sim(model, path, records, proc)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("ready"):
        stop_sim(sim)
        raise RuntimeError(f"simulator {model} did not start (got {line!r})")
    return sim


def stop_sim(sim: Sim) -> list[dict[str, object]]:
    """SIGTERM the simulator, wait for it, return its compute records (in order)."""
    if sim.proc.poll() is None:
        sim.proc.send_signal(signal.SIGTERM)
        try:
            sim.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.proc.kill()
            sim.proc.wait()
    if sim.proc.stdout is not None:
        sim.proc.stdout.close()
    if not sim.records.exists():
        return []
    return json.loads(sim.records.read_text())["records"]


def compute_per_infer(records: list[dict[str, object]]) -> list[int]:
    """Simulated compute µs of each ``infer`` command, in order (its warmup + infer phases)."""
    out: list[int] = []
    pending = 0
    for record in records:
        pending += int(record["total_us"])  # type: ignore[call-overload]
        if record["phase"] == "infer":
            out.append(pending)
            pending = 0
    return out


# --- the byte sequence ------------------------------------------------------------------------


def commands_for(data: bytes) -> list[bytes]:
    """What the client sends for ``load(data)`` + ``infer(1, 0)``, byte for byte."""
    out = [f"db load {len(data)}%".encode()]
    for offset in range(0, len(data), DIRECT_CHUNK):
        out.append(b"db " + data[offset : offset + DIRECT_CHUNK].hex().encode() + b"%")
    out.append(b"infer 1 0%")
    return out


# --- floor: blocking raw fd -------------------------------------------------------------------


def open_raw(path: Path, baud: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = _SPEEDS[baud]
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    termios.tcflush(fd, termios.TCIOFLUSH)
    return fd


def floor_run(fd: int, commands: list[bytes]) -> tuple[int, int, list[bytes]]:
    """Send each command, read until ``m-ready\\r\\n``; return (bytes out, bytes in, the last
    two replies) for checking after the timed region."""
    n_out = n_in = 0
    last: list[bytes] = []
    for command in commands:
        view = memoryview(command)
        while view:
            view = view[os.write(fd, view) :]
        n_out += len(command)
        buf = bytearray()
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError("pty closed")
            n_in += len(chunk)
            buf += chunk
            if buf.find(READY, max(0, len(buf) - len(chunk) - len(READY))) >= 0:
                break
        last = [*last[-1:], bytes(buf)]
    return n_out, n_in, last


def check_floor_replies(last: list[bytes]) -> None:
    load_reply, infer_reply = last
    if b"m-load-done" not in load_reply:
        raise RuntimeError(f"floor: last db chunk not confirmed: {load_reply!r}")
    if b"m-results-[" not in infer_reply or b"Input db" in infer_reply or b"e-[" in infer_reply:
        raise RuntimeError(f"floor: bad infer reply: {infer_reply!r}")


# --- one baud ---------------------------------------------------------------------------------


def timed(totals: Totals, run: Callable[[], tuple[int, int]]) -> None:
    cpu0, t0 = time.process_time(), time.perf_counter()
    n_out, n_in = run()
    t1, cpu1 = time.perf_counter(), time.process_time()
    totals.wall_s += t1 - t0
    totals.cpu_s += cpu1 - cpu0
    totals.bytes_out += n_out
    totals.bytes_in += n_in


def bench_baud(
    baud: int, repeat: int, median_s: float, seed: int, profiler: cProfile.Profile | None = None
) -> dict[str, Totals]:
    rng = random.Random(seed)
    inputs = {model: rng.randbytes(n) for model, n in CASES}
    commands = {model: commands_for(data) for model, data in inputs.items()}
    totals = {"client": Totals(), "floor": Totals()}
    owners: list[str] = []  # which path ran each rep's infer, in order (the same on every sim)
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="bench-serial-") as tmp:
        sims: list[Sim] = []
        links: list[SerialLink] = []
        fds: list[int] = []
        try:
            for i, (model, _) in enumerate(CASES):
                sims.append(start_sim(Path(tmp), model, baud, median_s, seed + i))
            for sim in sims:
                links.append(loop.run_until_complete(SerialLink.open(str(sim.path), baud)))
            clients = [
                DutClient(DirectChannel(link), MODELS[model])
                for link, (model, _) in zip(links, CASES, strict=True)
            ]
            fds = [open_raw(sim.path, baud) for sim in sims]

            async def client_seq() -> None:
                for client, (model, _) in zip(clients, CASES, strict=True):
                    await client.load(inputs[model])
                    await client.infer(1, 0)

            def client_run() -> tuple[int, int]:
                out0 = sum(link.bytes_out for link in links)
                in0 = sum(link.bytes_in for link in links)
                if profiler is None:
                    loop.run_until_complete(client_seq())
                else:
                    profiler.runcall(loop.run_until_complete, client_seq())
                return (
                    sum(link.bytes_out for link in links) - out0,
                    sum(link.bytes_in for link in links) - in0,
                )

            floor_last: list[list[bytes]] = []

            def floor_seq() -> tuple[int, int]:
                n_out = n_in = 0
                for fd, (model, _) in zip(fds, CASES, strict=True):
                    o, i, last = floor_run(fd, commands[model])
                    n_out, n_in = n_out + o, n_in + i
                    floor_last.append(last)
                return n_out, n_in

            for rep in range(repeat):
                order = ("client", "floor") if rep % 2 == 0 else ("floor", "client")
                for who in order:
                    timed(totals[who], client_run if who == "client" else floor_seq)
                    owners.append(who)
                for last in floor_last:
                    check_floor_replies(last)
                floor_last.clear()
                print(f"  {baud} baud: rep {rep + 1}/{repeat} done", file=sys.stderr, flush=True)
        finally:
            for fd in fds:
                os.close(fd)
            for link in links:
                loop.run_until_complete(link.close())  # returns once the fd is released
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            per_sim = [compute_per_infer(stop_sim(sim)) for sim in sims]
            leftovers = [str(sim.path) for sim in sims if sim.path.is_symlink()]
            if leftovers:
                print(f"warning: pty links left behind: {leftovers}", file=sys.stderr)
    for computes in per_sim:
        if len(computes) != len(owners):
            raise RuntimeError(f"{len(computes)} infer records for {len(owners)} infers")
        for who, us in zip(owners, computes, strict=True):
            totals[who].compute_us += us
            totals[who].infers += 1
    c, f = totals["client"], totals["floor"]
    # Identical commands; replies differ only in the digits of the m-lap-us counter values.
    if c.bytes_out != f.bytes_out or abs(c.bytes_in - f.bytes_in) > 40 * c.infers:
        raise RuntimeError(
            f"paths moved different bytes: client {c.bytes_out}/{c.bytes_in}, "
            f"floor {f.bytes_out}/{f.bytes_in}"
        )
    return totals


def report(baud: int, repeat: int, totals: dict[str, Totals]) -> None:
    floor_ratio = totals["floor"].wall_s / totals["floor"].modelled_s(baud)
    c, f = totals["client"], totals["floor"]
    print(
        f"\n{baud} baud, K={repeat}: per rep {c.bytes_out / repeat:.0f} B written, "
        f"{c.bytes_in / repeat:.0f} B read (client) / {f.bytes_in / repeat:.0f} B read (floor); "
        f"simulated compute {c.compute_us / 1e3:.1f} ms (client) / {f.compute_us / 1e3:.1f} ms "
        f"(floor) over {c.infers} infers each"
    )
    head = ("path", "wall s", "modelled s", "ratio", "client÷floor", "CPU s/MB", "CPU % core")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for who, t in totals.items():
        modelled = t.modelled_s(baud)
        ratio = t.wall_s / modelled
        rel = f"{ratio / floor_ratio:.3f}" if who == "client" else "1"
        cells = (who, f"{t.wall_s:.3f}", f"{modelled:.3f}", f"{ratio:.3f}", rel,
                 f"{t.cpu_s / t.mb:.3f}", f"{100 * t.cpu_s / t.wall_s:.2f}")  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, metavar="K")
    parser.add_argument("--bauds", type=int, nargs="+", default=[115200, 921600],
                        choices=sorted(_SPEEDS))  # fmt: skip
    parser.add_argument("--median-s", type=float, default=0.005, help="simulated inference")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--profile", type=Path, metavar="FILE",
        help="cProfile the client path into FILE (inflates its CPU and wall time)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    profiler = cProfile.Profile() if args.profile else None
    for baud in args.bauds:
        totals = bench_baud(baud, args.repeat, args.median_s, args.seed, profiler)
        report(baud, args.repeat, totals)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
