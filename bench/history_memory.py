"""Benchmark (not a test): Redis memory of a year of run history (``controller.history``).

    python bench/history_memory.py [--nights 365] [--boards 48] [--redis-server redis-server]

Starts a private ``redis-server`` (free port, no persistence) so nothing else shares its
memory figures, then writes the history a lab accumulates with one nightly full-suite sweep
(the full suite's four benchmarks in performance, accuracy and energy mode, and kws01's
latency mode: 13 benchmark × mode series per board) on ``--boards`` boards for ``--nights``
nights, through ``history.record`` (the function a run job calls), pipelined. Each run hash
is what a real completed run holds: its summary with realistic full-precision numbers and
the firmware identity (one image per model and build, replaced every 30 nights, as a lab
rebuilding its firmware monthly).

Prints the entries written, ``INFO memory``'s ``used_memory`` before and after (the
difference is what the history costs), bytes per entry, ``MEMORY USAGE`` of one series and
the time the writes and an ``entries()`` read of one series took.
``tests/integration/test_history.py`` imports :func:`year_of_history` and holds the figure
to ``controller.history.ENTRY_BUDGET_BYTES``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller import history  # noqa: E402

#: The series per board of a nightly full suite in every official mode (``farm submit
#: --suite full --mode performance,accuracy,energy``) plus kws01's latency mode: 13.
SERIES = (
    *(
        (b, m)
        for b in ("kws01", "vww01", "ic01", "ad01")
        for m in ("performance", "accuracy", "energy")
    ),
    ("kws01", "latency"),
)
NIGHT_S = 86_400.0
START = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def _summary(bench: str, mode: str, rng: random.Random) -> dict[str, Any]:
    summary: dict[str, Any] = {"samples": 5, "valid": True, "problems": [], "target_met": None}
    if mode == "performance":
        ips = rng.uniform(5, 3000)
        summary.update(throughput_ips=ips, latency_ms=1000 / ips)
    elif mode == "energy":
        summary["energy_uj"] = rng.uniform(5, 3000)
    elif mode == "latency":
        p50 = rng.randint(300, 300_000)
        summary.update(
            samples=1024, p50_us=p50, p90_us=p50 + 17, p99_us=p50 + 60, p90_early_stop_us=p50 + 19
        )
    elif bench == "ad01":
        summary.update(samples=48_608, auc=round(rng.uniform(0.8, 0.95), 3), target=0.85)
        summary["target_met"] = summary["auc"] >= 0.85
    else:
        summary.update(samples=1000, top1=round(rng.uniform(80, 95), 1), target=85.0)
        summary["target_met"] = summary["top1"] >= 85.0
    return summary


def year_of_history(nights: int, boards: int, seed: int = 1) -> Iterator[dict[str, str]]:
    """The completed run hashes of ``nights`` nightly full-suite sweeps on ``boards`` boards,
    in the order the runs finish."""
    rng = random.Random(seed)
    for night in range(nights):
        day = time.strftime("%Y%m%d", time.gmtime(START + night * NIGHT_S))
        sweep = f"sweep-{day}-020000-{night % 65536:04x}"
        generation = night // 30
        for b in range(boards):
            board = f"board-{b:02d}"
            agent = f"pi-{b // 8}"
            for i, (bench, mode) in enumerate(SERIES):
                build = "energy" if mode == "energy" else "performance"
                image = f"{bench}-{build}-r{generation}.bin"
                firmware = {
                    "model": bench,
                    "build": build,
                    "image": image,
                    "sha256": hashlib.sha256(f"{board}/{image}".encode()).hexdigest(),
                    "profile": "ULPMark for tinyML Firmware V0.0.1",
                    "name": "acme-labs",
                    "software": "0.4.0",
                }
                summary = _summary(bench, mode, rng)
                summary.update(artifacts=f"/srv/results/{sweep}/{board}/{bench}/{mode}")
                summary["firmware"] = firmware
                finished = START + night * NIGHT_S + 7200 + b * 37 + i * 181 + rng.random()
                yield {
                    "id": f"run-{day}-{b:02d}{i:02d}-{rng.getrandbits(16):04x}",
                    "sweep": sweep,
                    "label": "nightly",
                    "board": board,
                    "agent": agent,
                    "benchmark": bench,
                    "mode": mode,
                    "state": "completed",
                    "finished_at": repr(finished),
                    "summary": json.dumps(summary),
                    "firmware": json.dumps(firmware),
                }


def write(client: redis.Redis, runs: Iterator[dict[str, str]], batch: int = 2000) -> int:
    """Record every run through ``history.record`` on a pipeline; the number written."""
    count = 0
    pipe = client.pipeline(transaction=False)
    for run in runs:
        history.record(pipe, run)
        count += 1
        if count % batch == 0:
            pipe.execute()
    pipe.execute()
    return count


def used_memory(client: redis.Redis) -> int:
    """``INFO memory``'s ``used_memory``."""
    return int(client.info("memory")["used_memory"])


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_redis(binary: str, directory: Path) -> tuple[subprocess.Popen[bytes], redis.Redis]:
    """A redis-server of our own (no persistence) and a client that got its PONG."""
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, decode_responses=True)
    for _ in range(100):
        try:
            client.ping()
            return proc, client
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{binary} did not answer on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--boards", type=int, default=48)
    parser.add_argument("--redis-server", default="redis-server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, client = private_redis(args.redis_server, Path(tmp))
        try:
            before = used_memory(client)
            started = time.perf_counter()
            count = write(client, year_of_history(args.nights, args.boards))
            wrote_s = time.perf_counter() - started
            after = used_memory(client)
            one = client.memory_usage(history_key := "farm:history:board-00:kws01:performance")
            started = time.perf_counter()
            found = history.entries(client, "board-00", "kws01", "performance")
            read_s = time.perf_counter() - started
            version = client.info("server")["redis_version"]
        finally:
            proc.terminate()
            proc.wait(10)
    per = (after - before) / count
    print(f"redis-server {version}: {count} entries ({args.nights} nights x {args.boards} boards "
          f"x {len(SERIES)} series) written in {wrote_s:.1f} s")  # fmt: skip
    print(f"used_memory {before} -> {after} bytes: {after - before} bytes, {per:.0f} per entry")
    print(f"MEMORY USAGE {history_key}: {one} bytes ({len(found)} entries, read in "
          f"{read_s * 1000:.1f} ms)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
