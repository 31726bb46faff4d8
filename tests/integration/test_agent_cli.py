"""`farm sim` writes an agent config that `farm agent check` accepts; `farm agent check` and
`suggest` as a user runs them: real processes, real ptys, real files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agent.config import load_agent_config

FARM = [sys.executable, "-m", "farm.cli"]
DATASETS = ("ad01", "ic01", "kws01", "vww01")


@dataclass
class Sim:
    """A running `farm sim` and its output directory."""

    out: Path
    proc: subprocess.Popen[bytes]

    @property
    def agent_yaml(self) -> Path:
        return self.out / "agent.yaml"

    def boards(self) -> list[dict]:
        return json.loads((self.out / "boards.json").read_text())["boards"]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        _, stderr = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, stderr.decode()
        return stderr.decode()


def start_sim(out: Path, *extra: str) -> Sim:
    proc = subprocess.Popen(
        [*FARM, "sim", "--out", str(out), "--boards", "2", "--energy", "1", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sim = Sim(out, proc)
    deadline = time.monotonic() + 30
    while not sim.agent_yaml.exists():
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1].decode())
        assert time.monotonic() < deadline, "agent.yaml never appeared"
        time.sleep(0.05)
    return sim


def farm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FARM, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    running = start_sim(
        tmp_path_factory.mktemp("sim"),
        "--dataset-limit",
        "5",
        "--agent-id",
        "pi-sim",
        "--broker",
        "mqtt://127.0.0.1:18830",
    )
    yield running
    running.stop()


def test_sim_writes_the_agent_config_and_datasets(sim: Sim) -> None:
    cfg = load_agent_config(sim.agent_yaml)
    boards = sim.boards()
    assert cfg.agent == "pi-sim" and cfg.broker.url == "mqtt://127.0.0.1:18830"
    assert cfg.sim_boards == [sim.out / "boards.json"]
    assert cfg.journal == sim.out / "agent-journal.sqlite"
    assert [b.id for b in cfg.boards] == [b["id"] for b in boards]
    plain, wired = cfg.boards
    assert plain.dut.match.serial == boards[0]["usb"]["serial"]
    assert not plain.energy_capable and plain.power_cycle.method == "command"
    assert wired.interface is not None and wired.monitor is not None
    assert wired.interface.match.serial == boards[1]["interface"]["usb"]["serial"]
    assert wired.monitor.match.serial == boards[1]["monitor"]["usb"]["serial"]
    assert wired.power_cycle.method == "monitor"
    assert plain.tags == {"sim": "true", "model": "kws01"}
    assert set(plain.firmware.images["ad01"]) == {"performance"}
    assert set(wired.firmware.images["ad01"]) == {"performance", "energy"}
    assert all(
        image.is_file()
        for b in cfg.boards
        for i in b.firmware.images.values()
        for image in i.values()
    )
    assert plain.firmware.flash is not None and "{image}" in plain.firmware.flash
    for dataset in DATASETS:
        rows = (cfg.datasets / dataset / "y_labels.csv").read_text().splitlines()
        assert len(rows) == 5, dataset


def test_check_finds_every_simulated_device(sim: Sim) -> None:
    done = farm("agent", "check", "--config", str(sim.agent_yaml))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 4 devices of 2 board(s) found" in done.stdout
    assert f"farm agent --config {sim.agent_yaml}" in done.stdout


def test_suggest_lists_the_simulated_devices(sim: Sim) -> None:
    done = farm("agent", "suggest", "--sim", str(sim.out / "boards.json"))
    assert done.returncode == 0, done.stderr
    documents = list(yaml.safe_load_all(done.stdout))
    boards = sim.boards()
    # The ptys have no USB identity; boards.json's stands in for it.
    expected = [
        {"dut": {"match": {"serial": boards[0]["usb"]["serial"], "vid_pid": "0483:374B"}}},
        {"dut": {"match": {"serial": boards[1]["usb"]["serial"], "vid_pid": "0483:374B"}}},
        {
            "interface": {
                "match": {"serial": boards[1]["interface"]["usb"]["serial"], "vid_pid": "0483:374E"}
            }
        },
        {
            "monitor": {
                "match": {"serial": boards[1]["monitor"]["usb"]["serial"], "vid_pid": "0483:5740"}
            }
        },
    ]
    assert [d for d in documents if d] == expected
    assert f"# {boards[1]['monitor']['path']}" in done.stdout


def test_check_names_the_board_and_match_that_find_nothing(sim: Sim, tmp_path: Path) -> None:
    config = yaml.safe_load(sim.agent_yaml.read_text())
    config["boards"][1]["monitor"]["match"]["serial"] = "0123456789AB"
    bad = tmp_path / "agent.yaml"
    bad.write_text(yaml.safe_dump(config))
    done = farm("agent", "check", "--config", str(bad))
    assert done.returncode == 1, done.stdout + done.stderr
    stderr = " ".join(done.stderr.split())  # undo rich's line wrapping
    assert "board sim-02-vww01 monitor: no serial device matches serial=0123456789AB" in stderr
    assert "1 problem(s)" in stderr


def test_invalid_config_exits_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text(
        "agent: pi\ndatasets: d\nboards:\n  - id: b\n    dut:\n      match: {serial: X}\n"
        "    baud: {performance: fast}\n"
    )
    for args in (["check", "--config", str(bad)], ["--config", str(bad)]):
        done = farm("agent", *args)
        assert done.returncode == 2, done.stderr
        assert f"{bad}:7: boards[0].baud.performance:" in done.stderr.replace("\n", "")


def test_a_second_sim_keeps_the_datasets_of_the_first(tmp_path: Path) -> None:
    first = start_sim(tmp_path, "--dataset-limit", "3")
    index = tmp_path / "datasets" / "kws01" / "y_labels.csv"
    written = index.stat().st_mtime_ns
    assert "writing the ad01, ic01, kws01, sww01, vww01 dataset(s)" in first.stop()
    assert not first.agent_yaml.exists()  # it described the boards that just stopped

    second = start_sim(tmp_path, "--dataset-limit", "3")
    assert "writing the" not in second.stop()
    assert index.stat().st_mtime_ns == written


def test_agent_with_a_missing_password_file_exits_2_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: pi-x\ndatasets: data\nbroker:\n  url: mqtt://farm@127.0.0.1:1883\n"
        "  password_file: missing.txt\nboards:\n  - id: b1\n    dut:\n"
        '      match: {serial: "X1"}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "farm.cli", "agent", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,  # not retried for ever
    )
    assert done.returncode == 2, done.stderr
    assert "cannot read the broker password file" in " ".join(done.stderr.split())
