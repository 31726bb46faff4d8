"""A short scripted exchange with a board described like a ``boards.json`` entry: open its
DUT, ask its name and model, download one input, run one inference. ``farm sim --check``
uses it to show simulated boards working end to end over their ptys. An sww01 DUT, which
takes no input, is asked its name and model, and through its interface board starts and stops
an (empty) stream."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agent.dut_client import DirectChannel, DutClient
from agent.energy_monitor import window_energy
from agent.interface_client import InterfaceClient
from agent.lpm01a_client import Lpm01aClient
from agent.serial_link import SerialLink
from farm.catalog import get_benchmark
from farm.models import ModelSpec, get_model
from farm.protocol import sww
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
    energy_uj: float | None = None
    """Energy path only: µJ per inference between the last two timestamp events."""
    window_s: float | None = None


async def _name_and_load(client: DutClient, model: ModelSpec) -> tuple[str, str, float]:
    """Ask the DUT its name and model, download one input: (vendor, model, seconds to load)."""
    vendor = await client.name()
    _, reported = await client.profile()
    if model.result_format == "sww":
        return vendor, reported, 0.0  # sww01 streams its audio: nothing to download
    data = encode_input(model, label=0, u=0.5, file_bytes=model.input_bytes, seed=1)
    started = time.monotonic()
    await client.load(data)
    return vendor, reported, time.monotonic() - started


async def probe_direct(board: dict[str, Any]) -> ProbeResult:
    """Probe a board through its DUT port (performance firmware)."""
    path, baud = board["dut"]["path"], int(board["dut"]["baud"])
    model = get_model(board["model"])
    link: SerialLink | None = None
    try:
        link = await SerialLink.open(path, baud)
        client = DutClient(DirectChannel(link), model)
        await client.resync()
        vendor, reported, load_s = await _name_and_load(client, model)
        if model.result_format == "sww":
            return ProbeResult(board["id"], path, True, reported, vendor)
        result = await client.infer(1, 0)
        return ProbeResult(
            board["id"], path, True, reported, vendor, load_s, result.elapsed_us, result.results
        )
    except Exception as exc:  # a probe reports every failure instead of raising
        return ProbeResult(board["id"], path, False, error=f"{type(exc).__name__}: {exc}")
    finally:
        if link is not None:
            await link.close()


#: Inferences in the probe's energy window: enough for a window of many 1 ms samples.
ENERGY_PROBE_COUNT = 20


async def probe_energy(board: dict[str, Any]) -> ProbeResult:
    """Probe a board through its interface board with the LPM01A measuring: the official
    energy-mode order (monitor set-up, power on, acquisition, ``setbaud``), then one
    download and one ``infer`` window between two timestamp events."""
    iface, monitor = board["interface"], board["monitor"]
    model = get_model(board["model"])
    # The reference DUT supply (docs/measurement.md#benchmarks): 1.8 V, sww01 3.3 V.
    supply_mv = round(get_benchmark(model.id).supply_voltage * 1000)
    links: list[SerialLink] = []
    lpm: Lpm01aClient | None = None
    try:
        links.append(await SerialLink.open(monitor["path"], int(monitor["baud"])))
        links.append(await SerialLink.open(iface["path"], int(iface["baud"])))
        lpm = Lpm01aClient(links[0])
        interface = InterfaceClient(links[1], dut_baud=model.energy_baud)
        await lpm.setup(supply_mv)
        await lpm.power(True, voltage_mv=supply_mv)
        await lpm.start()
        await interface.resync()  # setbaud: flushes the DUT's boot banner from the board
        client = interface.dut(model)
        vendor, reported, load_s = await _name_and_load(client, model)
        if model.result_format == "sww":
            # An empty stream: armed, then stopped with no frame played.
            started = sww.stream_started(await client.command("start"))
            stopped = sww.stream_stop(await client.command("stop")).stopped
            await lpm.stop()
            await lpm.teardown()
            ok = started and stopped
            error = "" if ok else "the DUT would not start and stop a stream"
            return ProbeResult(board["id"], iface["path"], ok, reported, vendor, error=error)
        lpm.drain()  # the download period
        result = await client.infer(ENERGY_PROBE_COUNT, 0)
        energy = window_energy(await lpm.window(events=2), lpm.freq_hz)
        await lpm.stop()
        await lpm.teardown()
        return ProbeResult(
            board["id"],
            iface["path"],
            True,
            reported,
            vendor,
            load_s,
            None,
            result.results,
            energy_uj=energy.energy_j / ENERGY_PROBE_COUNT * 1e6,
            window_s=energy.seconds,
        )
    except Exception as exc:  # a probe reports every failure instead of raising
        return ProbeResult(board["id"], iface["path"], False, error=f"{type(exc).__name__}: {exc}")
    finally:
        if lpm is not None:
            await lpm.close()
        for link in links:
            await link.close()


async def probe(board: dict[str, Any]) -> ProbeResult:
    """Probe a ``boards.json`` entry by the path its firmware speaks on."""
    if board["firmware"] == "energy" and board.get("interface") and board.get("monitor"):
        return await probe_energy(board)
    return await probe_direct(board)
