"""The firmware identity of a run: the agent hashes each image file once per version of it,
builds the ``started`` event's identity from the DUT's answers and its config, and ingest
stores it in the run hash; an agent that sends none still reads as before."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

from agent.board_access import Identity
from agent.config import BoardConfig
from agent.identity import ImageDigests, firmware_identity, software_version
from controller.ingest.run_events import event_updates
from farm.messages import RUN_EVENTS, FirmwareIdentity, Started


def board(images: dict[str, dict[str, Path]]) -> BoardConfig:
    return BoardConfig.model_validate(
        {"id": "kws-1", "dut": {"match": {"serial": "X1"}}, "firmware": {"images": images}}
    )


def test_an_image_is_hashed_once_per_version_of_the_file(tmp_path: Path) -> None:
    image = tmp_path / "kws01-performance.bin"
    image.write_bytes(b"first build")
    digests = ImageDigests()

    async def digest() -> str | None:
        return await digests.digest(image)

    first = asyncio.run(digest())
    assert first == hashlib.sha256(b"first build").hexdigest()
    # Same size and modification time: the known digest, the file is not read again.
    stat = image.stat()
    image.write_bytes(b"other build")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert asyncio.run(digest()) == first
    # A replaced file (another modification time) is hashed again.
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert asyncio.run(digest()) == hashlib.sha256(b"other build").hexdigest()
    image.unlink()
    assert asyncio.run(digest()) is None


def test_the_identity_names_the_configured_image_of_what_the_dut_runs(tmp_path: Path) -> None:
    image = tmp_path / "kws01-perf.bin"
    image.write_bytes(b"\x00firmware")
    cfg = board({"kws01": {"performance": image}})
    runs_kws = Identity("kws01", "performance", "acme", 115200, "ULPMark V0.0.1")
    found = asyncio.run(firmware_identity(cfg, runs_kws, ImageDigests()))
    assert found == FirmwareIdentity(
        image="kws01-perf.bin",
        sha256=hashlib.sha256(b"\x00firmware").hexdigest(),
        profile="ULPMark V0.0.1",
        name="acme",
        software=software_version(),
    )
    # Firmware the config has no image for (flashed by hand): the DUT's answers only; a
    # DUT's over-long answer is cut to what the message allows.
    other = Identity("vww01", "performance", "x" * 500, None, None)
    found = asyncio.run(firmware_identity(cfg, other, ImageDigests()))
    assert (found.image, found.sha256, found.profile) == (None, None, None)
    assert found.name == "x" * 120


def test_started_carries_the_identity_and_an_older_agents_started_still_reads() -> None:
    common = {"agent": "a", "board": "b", "run": "r", "event": "started", "model": "kws01"}
    firmware = FirmwareIdentity(image="k.bin", sha256="c" * 64, profile="p", name="n")
    started = Started(build="performance", total=5, dataset="d", firmware=firmware, **common)
    assert RUN_EVENTS.validate_json(started.dumps()) == started
    older = Started(build="performance", total=5, dataset="d", **common)
    assert b"firmware" not in older.dumps()
    assert RUN_EVENTS.validate_json(older.dumps()) == older

    stored = json.loads(event_updates(started, "dispatched", None, "")["firmware"])
    assert stored == {
        "model": "kws01",
        "build": "performance",
        "image": "k.bin",
        "sha256": "c" * 64,
        "profile": "p",
        "name": "n",
        "software": None,
    }
    stored = json.loads(event_updates(older, "running", None, "")["firmware"])
    assert stored["model"] == "kws01" and stored["sha256"] is None
    # A started event of a run that is no longer live changes nothing.
    assert "firmware" not in event_updates(started, "completed", None, "")
