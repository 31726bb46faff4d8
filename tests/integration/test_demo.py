"""`farm demo --quick` end to end: with the embedded Valkey and amqtt forced, and with the real
Redis and Mosquitto; the table must equal the simulators' ground truth and nothing the demo
started may be left behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from pathlib import Path

import pytest
import redis

from controller.demo import QUALITY, dataset_rows
from tests.integration.controller_lab import REDIS_URL

#: The quick demo's dataset subsets (stratified: every class in each).
ROWS = dataset_rows(quick=True)


async def start_demo(
    out: Path, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``farm demo --quick`` on four boards, with its JSON report on stdout."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "farm.cli",
        "demo",
        "--quick",
        "--boards",
        "4",
        "--json",
        "--out",
        str(out),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "300", **(env or {})},
    )


async def run_demo(
    out: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    process = await start_demo(out, *args, env=env)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 600)
    return process.returncode or 0, stdout.decode(), stderr.decode()


def check_progress(stderr: str) -> None:
    """Off a terminal: a line per run state change and sweep lines with done/total."""
    assert re.search(r"s  sw-\S+ sim-01-kws01 kws01 performance: completed", stderr), stderr
    assert re.search(r"sweep sw-\S+: (\d+)/\1 runs done", stderr), stderr
    assert "farm show" in stderr  # what to do next


def leftovers(out: Path) -> list[str]:
    """Processes still running with the demo's folder on their command line."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(out) in text:
            found.append(text)
    return found


def check_report(report: dict) -> None:
    """Every run completed; each board's accuracy is its simulator's configured quality over
    the subset (a board with quality q answers round(q * n) of n files right)."""
    runs = report["runs"]
    assert runs and all(r["state"] == "completed" for r in runs), [
        (r["board"], r["mode"], r["state"], r["reason"]) for r in runs if r["state"] != "completed"
    ]
    for run in runs:
        if run["mode"] != "accuracy":
            continue
        quality = QUALITY[run["benchmark"]]
        if run["benchmark"] == "ad01":
            assert run["summary"]["auc"] == pytest.approx(quality, abs=0.05)
        else:
            n = ROWS[run["benchmark"]]
            # Percent with one decimal, as results.txt prints it.
            assert run["summary"]["top1"] == pytest.approx(round(100 * round(quality * n) / n, 1))
        # Defined and at the target the board's quality is above (no rounding artefact).
        assert run["summary"]["target_met"] is True
    # Energy where wired (the last two boards), latency percentiles where not.
    modes = {(r["board"], r["mode"]) for r in runs}
    assert sum(1 for _, m in modes if m == "energy") == 2
    assert sum(1 for _, m in modes if m == "latency") == 2
    for run in runs:
        if run["mode"] == "latency":
            assert (
                run["summary"]["p50_us"] > 0
                and run["summary"]["p99_us"] >= run["summary"]["p50_us"]
            )
        if run["mode"] == "energy":
            assert run["summary"]["energy_uj"] > 0


def assert_clean(out: Path, stderr: str) -> None:
    assert leftovers(out) == []
    assert not list((out / "sim").glob("*/dut")), "a pty symlink was left behind"
    for port in re.findall(r"127\.0\.0\.1:(\d+)", stderr):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still open"


async def test_demo_with_embedded_services(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, stdout, stderr = await run_demo(out, "--embedded")
    assert code == 0, stderr[-3000:]
    assert "embedded Valkey" in stderr and "amqtt" in stderr
    check_report(json.loads(stdout))
    check_progress(stderr)
    assert_clean(out, stderr)


async def test_demo_with_the_real_services(tmp_path: Path) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    out = tmp_path / "demo"
    code, stdout, stderr = await run_demo(
        out,
        "--no-embedded",
        env={"FARM_REDIS_URL": REDIS_URL, "FARM_MQTT_URL": "mqtt://127.0.0.1:1883"},
    )
    assert code == 0, stderr[-3000:]
    assert "embedded" not in stderr
    check_report(json.loads(stdout))
    assert leftovers(out) == []


async def test_a_tls_only_broker_is_refused_with_the_way_out(tmp_path: Path) -> None:
    """The demo's agent is configured by `farm sim`, which writes no TLS settings: rather than
    start everything and wait for an agent that can never connect, the demo says so."""
    with socket.socket() as listener:  # something answers at the broker's address
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code, stdout, stderr = await run_demo(
            tmp_path / "demo",
            "--no-embedded",
            env={
                "FARM_REDIS_URL": REDIS_URL,
                "FARM_MQTT_URL": f"mqtts://u:secret@127.0.0.1:{port}",
            },
        )
    assert code != 0
    assert "speaks plain MQTT" in stderr and "--embedded" in stderr, stderr[-2000:]
    assert "secret" not in stderr
    assert stdout == ""
