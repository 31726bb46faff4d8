"""`farm sim` as a user runs it: a separate process, boards.json, Ctrl-C cleanup, bad config."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.probe import probe_direct

FARM = [sys.executable, "-m", "farm.cli"]


def wait_for(path: Path, proc: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


async def probe_all(boards: list[dict]) -> list:
    return list(await asyncio.gather(*(probe_direct(b) for b in boards)))


def test_sim_writes_boards_json_serves_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    proc = subprocess.Popen(
        [*FARM, "sim", "--boards", "4", "--energy", "1", "--out", str(out)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        wait_for(out / "boards.json", proc)
        boards = json.loads((out / "boards.json").read_text())["boards"]
        assert [b["model"] for b in boards] == ["kws01", "vww01", "ic01", "ad01"]
        assert [b["firmware"] for b in boards] == ["performance"] * 3 + ["energy"]
        serials = {b["usb"]["serial"] for b in boards}
        assert len(serials) == 4
        for b in boards:
            assert set(b) == {"id", "model", "firmware", "dut", "interface", "monitor", "usb"}
            assert os.path.realpath(b["dut"]["path"]).startswith("/dev/pts/")
            assert b["usb"]["vid"] == "0483" and b["usb"]["pid"] == "374B"
        assert boards[0]["interface"] is None and boards[0]["monitor"] is None
        assert boards[3]["interface"]["baud"] == 115200
        assert boards[3]["monitor"]["kind"] == "lpm01a"
        assert os.path.realpath(boards[3]["monitor"]["path"]).startswith("/dev/pts/")

        results = asyncio.run(probe_all(boards[:3]))
        assert all(r.ok for r in results), [r.error for r in results]
        assert [r.model for r in results] == ["kws01", "vww01", "ic01"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr.decode()
    assert not (out / "boards.json").exists()
    leftovers = [p for p in out.rglob("*") if p.is_symlink()]
    assert leftovers == []


def test_sigterm_cleans_up_too(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    proc = subprocess.Popen(
        [*FARM, "sim", "--boards", "2", "--out", str(out)], stderr=subprocess.PIPE
    )
    wait_for(out / "boards.json", proc)
    links = [
        Path(b["dut"]["path"]) for b in json.loads((out / "boards.json").read_text())["boards"]
    ]
    assert all(link.is_symlink() for link in links)
    proc.terminate()
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr.decode()
    assert not any(link.is_symlink() for link in links)
    assert not (out / "boards.json").exists()


def test_sim_check_runs_the_scripted_exchange(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *FARM,
            "sim",
            "--models",
            "kws01,ad01",
            "--energy",
            "1",
            "--out",
            str(tmp_path / "s"),
            "--check",
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    text = done.stdout.decode()
    assert "sim-01-kws01" in text and "sim-02-ad01" in text
    assert text.count("yes") >= 2


def test_malformed_config_names_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("boards:\n  - id: a\n    model: kws01\n    latency: {median_s: 0}\n")
    done = subprocess.run(
        [*FARM, "sim", "--config", str(config), "--out", str(tmp_path / "s")],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{config}:4: boards[0].latency.median_s" in done.stderr.decode().replace("\n", "")


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [*FARM, "sim", "--models", "kws01,foo", "--out", str(tmp_path / "s")],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown model(s) foo" in done.stderr.decode()
