"""A short scripted exchange with a board described like a ``boards.json`` entry: open its
DUT, ask its name and model, download one input, run one inference. ``farm sim --check``
uses it to show simulated boards working end to end over their ptys."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agent.dut_client import DirectChannel, DutClient
from agent.serial_link import SerialLink
from farm.models import get_model
from farm.synthetic import encode_input


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe saw."""

    board: str
    path: str
    ok: bool
    model: str = ""
    vendor: str = ""
    load_s: float = 0.0
    elapsed_us: int | None = None
    results: tuple[float, ...] = ()
    error: str = ""


async def probe_direct(board: dict[str, Any]) -> ProbeResult:
    """Probe a board through its DUT port (performance firmware)."""
    path, baud = board["dut"]["path"], int(board["dut"]["baud"])
    model = get_model(board["model"])
    link: SerialLink | None = None
    try:
        link = await SerialLink.open(path, baud)
        client = DutClient(DirectChannel(link), model)
        await client.resync()
        vendor = await client.name()
        _, reported = await client.profile()
        data = encode_input(model, label=0, u=0.5, file_bytes=model.input_bytes, seed=1)
        started = time.monotonic()
        await client.load(data)
        load_s = time.monotonic() - started
        result = await client.infer(1, 0)
        return ProbeResult(
            board["id"], path, True, reported, vendor, load_s, result.elapsed_us, result.results
        )
    except Exception as exc:  # a probe reports every failure instead of raising
        return ProbeResult(board["id"], path, False, error=f"{type(exc).__name__}: {exc}")
    finally:
        if link is not None:
            await link.close()
