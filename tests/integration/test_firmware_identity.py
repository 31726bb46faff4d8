"""Firmware identity end to end: a simulated board's run carries the SHA-256 and file name of
the image `farm sim` wrote, the DUT's profile and name and the agent's version, from the
agent's `started` event into the run hash, summary.json, `farm show`, the history and the
exporter; and with ``FARM_SAMPLES_RETENTION_S=0`` the run's samples leave Redis at its end
while everything that reads a finished run still works."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller import history
from controller.exporter import make_registry
from farm.protocol.dut_firmware import PROFILE
from tests.integration.controller_lab import ControllerLab

QUICK = json.dumps({"min_window_s": 0.5, "calibration_s": 0.2})
BOARD = "- {id: ic-1, model: ic01, vendor: acme-labs, latency: {median_s: 0.004, spread: 0}}\n"


async def test_a_run_carries_the_identity_of_the_image_that_produced_it(
    lab: ControllerLab,
) -> None:
    lab.extra_env["FARM_SAMPLES_RETENTION_S"] = "0"
    await lab.add_agent("pi-a", BOARD)
    await lab.start_controller(workers=1)
    await lab.boards_ready(["ic-1"])
    image = lab.dir / "sim-pi-a" / "firmware" / "ic01-performance.bin"
    digest = hashlib.sha256(image.read_bytes()).hexdigest()

    _, out, _ = await lab.farm(
        "submit", "--benchmark", "ic", "--boards", "ic-1", "--mode", "performance",
        "--options", QUICK, "--label", "nightly", "--wait", "--json",
    )  # fmt: skip
    submitted = json.loads(out)
    sweep_id = submitted["sweep"]
    (run_id,) = submitted["runs"]
    run = lab.redis.hgetall(f"farm:run:{run_id}")
    assert run["state"] == "completed", run

    expected = {
        "model": "ic01",
        "build": "performance",
        "image": "ic01-performance.bin",
        "sha256": digest,
        "profile": PROFILE,
        "name": "acme-labs",
    }
    firmware = json.loads(run["firmware"])
    assert {k: firmware[k] for k in expected} == expected
    assert firmware["software"]  # the installed version (or "unknown" outside an install)
    summary = json.loads((Path(run["artifacts"]) / "summary.json").read_text())
    assert summary["firmware"] == firmware
    assert json.loads(run["summary"])["firmware"] == firmware

    _, out, _ = await lab.farm("show", sweep_id, "--format", "json")
    shown = json.loads(out)["runs"][0]
    assert shown["firmware"] == firmware and shown["summary"]["firmware"] == firmware
    _, table, _ = await lab.farm("show", sweep_id, "--format", "markdown")
    assert "ic01-performance.bin" in table and digest[:12] in table and "acme-labs" in table
    _, text, _ = await lab.farm("show", sweep_id, "--format", "csv")
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["firmware_sha256"] == digest and row["firmware_image"] == "ic01-performance.bin"

    # Kept as history, firmware and all.
    (entry,) = history.entries(lab.redis, "ic-1", "ic01", "performance")
    assert (entry.run, entry.sweep, entry.label) == (run_id, sweep_id, "nightly")
    assert entry.firmware is not None and entry.firmware.sha256 == digest
    assert entry.throughput_ips == pytest.approx(summary["throughput_ips"])
    assert [s.id for s in history.sweeps(lab.redis, label="nightly")] == [sweep_id]

    # Retention 0: the samples left Redis at the run's end; its folder holds them.
    assert not lab.redis.exists(f"farm:run:{run_id}:samples", f"farm:run:{run_id}:events")
    lines = (Path(run["artifacts"]) / "samples.jsonl").read_text().splitlines()
    assert len(lines) == summary["samples"] == 5

    # The exporter: one info series for the board x benchmark x mode, the digest's prefix.
    registry, _ = make_registry(lab.redis)
    families = text_string_to_metric_families(generate_latest(registry).decode())
    info = [
        s.labels
        for family in families
        for s in family.samples
        if s.name == "farm_result_firmware_info"
    ]
    assert info == [
        {
            "board": "ic-1",
            "benchmark": "ic01",
            "mode": "performance",
            "image": "ic01-performance.bin",
            "image_sha256": digest[:12],
            "profile": PROFILE,
            "dut_name": "acme-labs",
            "software": firmware["software"],
        }
    ]
