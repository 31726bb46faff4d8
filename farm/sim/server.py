"""Hosts simulated boards in one asyncio process and describes them in ``boards.json``.

``boards.json`` schema (read by the agent and by tests)::

    {"boards": [{
        "id": str, "model": "kws01" | "vww01" | "ic01" | "ad01",
        "firmware": "performance" | "energy",
        "dut": {"path": str, "baud": int, "usb": {...}},
        "interface": {"path": str, "baud": int, "usb": {...}} | null,
        "monitor": {"path": str, "baud": int, "kind": "lpm01a", "usb": {...}} | null,
        "usb": {"vid": "0483", "pid": "374B", "serial": str}
    }]}

``path`` is a stable symlink to the device's pty; ``usb`` is the identity the real device
would show (VID, PID and a serial number unique per board), since a pty has none. The
top-level ``usb`` is the DUT's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from farm.models import MODELS
from farm.sim.config import (
    DUT_USB,
    INTERFACE_BAUD,
    INTERFACE_USB,
    MONITOR_BAUD,
    MONITOR_USB,
    BoardConfig,
    SimConfig,
)
from farm.sim.dut import DutCounter, SimDut
from farm.sim.faults import FaultPlan
from farm.sim.interface import SimInterface
from farm.sim.latency import LatencyModel
from farm.sim.lpm01a import SimLpm01a
from farm.sim.power import GpioLine, PowerModel, PowerRail
from farm.sim.pty_port import PtyPort
from farm.sim.transcript import Transcript
from farm.sim.wire_pair import wire_pair

log = logging.getLogger("farm.sim.server")


def board_seed(global_seed: int, board: BoardConfig) -> int:
    """The board's own seed: explicit, or derived from the global seed and its id."""
    if board.seed is not None:
        return board.seed
    return int.from_bytes(hashlib.sha256(f"{global_seed}/{board.id}".encode()).digest()[:8], "big")


@dataclass
class SimBoard:
    """One board: its DUT, and if wired for energy an interface board and an LPM01A."""

    config: BoardConfig
    directory: Path
    seed: int
    transcripts: bool = False
    rail: PowerRail = field(default_factory=PowerRail)
    gpio: GpioLine = field(default_factory=GpioLine)

    def __post_init__(self) -> None:
        cfg = self.config
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_transcripts: list[Transcript] = []
        self.power = PowerModel(idle_w=cfg.power.idle_w, active_w=cfg.power.active_w)
        self.dut_port = PtyPort(
            self.directory / "dut", cfg.dut_baud, transcript=self._transcript("dut")
        )
        self.interface_port: PtyPort | None = None
        self.monitor_port: PtyPort | None = None
        self.interface: SimInterface | None = None
        self.monitor: SimLpm01a | None = None
        uart = self.dut_port
        if cfg.energy:
            interface_end, dut_end = wire_pair(
                cfg.dut_baud, names=("interface", "dut"), transcript=self._transcript("dut-wire")
            )
            self.interface_port = PtyPort(
                self.directory / "interface",
                INTERFACE_BAUD,
                transcript=self._transcript("interface"),
            )
            self.monitor_port = PtyPort(
                self.directory / "monitor", MONITOR_BAUD, transcript=self._transcript("monitor")
            )
            self.interface = SimInterface(
                board=cfg.id,
                host=self.interface_port,
                dut=interface_end,
                faults=self._faults("interface", 1),
            )
            if cfg.firmware == "energy":
                uart = dut_end
        self.dut = SimDut(
            board=cfg.id,
            model=MODELS[cfg.model],
            build=cfg.firmware,
            uart=uart,
            latency=LatencyModel(
                cfg.median_s,
                cfg.latency.spread,
                cfg.latency.tail_probability,
                cfg.latency.tail_factor,
                seed=self.seed,
            ),
            quality=cfg.target_quality,
            counter=DutCounter(cfg.clock_start_us),
            boot_s=cfg.boot_s,
            rx_fifo=cfg.rx_fifo,
            pulse_hold_s=cfg.pulse_hold_s,
            vendor=cfg.vendor,
            faults=self._faults("dut", 0),
            power=self.power,
            gpio=self.gpio,
            rail=self.rail,
        )
        if cfg.energy and self.monitor_port is not None:
            self.monitor = SimLpm01a(
                board=cfg.id,
                host=self.monitor_port,
                power=self.power,
                gpio=self.gpio,
                rail=self.rail,
                dut_reset=self.dut.reset,
                faults=self._faults("monitor", 2),
            )

    def _faults(self, device: str, stream: int) -> FaultPlan:
        specs = [f for f in self.config.faults if f.target == device]
        return FaultPlan(specs, self.seed + stream, f"{self.config.id}/{device}")

    def _transcript(self, device: str) -> Transcript | None:
        if not self.transcripts:
            return None
        transcript = Transcript(self.directory / f"{device}.transcript.jsonl")
        self._open_transcripts.append(transcript)
        return transcript

    async def start(self) -> None:
        """Create the ptys and power the devices on."""
        for port in self._ports():
            await port.start()
        await self.dut.start()
        if self.interface is not None:
            await self.interface.start()
        if self.monitor is not None:
            await self.monitor.start()

    async def stop(self) -> None:
        """Stop every device and remove its pty and symlink."""
        for device in (self.monitor, self.interface, self.dut):
            if device is not None:
                await device.stop()
        for port in self._ports():
            await port.close()
        for transcript in self._open_transcripts:
            await transcript.aclose()  # flushes what the writer thread still holds

    def _ports(self) -> list[PtyPort]:
        return [p for p in (self.dut_port, self.interface_port, self.monitor_port) if p is not None]

    def descriptor(self) -> dict[str, object]:
        """This board's entry in ``boards.json``."""
        cfg = self.config

        def usb(ids: tuple[str, str], kind: str) -> dict[str, str]:
            return {"vid": ids[0], "pid": ids[1], "serial": cfg.serial_number(kind)}

        dut_usb = usb(DUT_USB, "dut")
        return {
            "id": cfg.id,
            "model": cfg.model,
            "firmware": cfg.firmware,
            "dut": {"path": str(self.dut_port.path), "baud": cfg.dut_baud, "usb": dut_usb},
            "interface": None
            if self.interface_port is None
            else {
                "path": str(self.interface_port.path),
                "baud": INTERFACE_BAUD,
                "usb": usb(INTERFACE_USB, "interface"),
            },
            "monitor": None
            if self.monitor_port is None
            else {
                "path": str(self.monitor_port.path),
                "baud": MONITOR_BAUD,
                "kind": "lpm01a",
                "usb": usb(MONITOR_USB, "monitor"),
            },
            "usb": dut_usb,
        }


class SimFarm:
    """Every simulated board of a config, plus the ``boards.json`` that describes them."""

    def __init__(self, config: SimConfig, out: str | Path, *, transcripts: bool = False) -> None:
        self.config = config
        self.out = Path(out).absolute()
        self.boards = {
            b.id: SimBoard(b, self.out / b.id, board_seed(config.seed, b), transcripts)
            for b in config.boards
        }

    @property
    def boards_json(self) -> Path:
        """Where the board descriptors are written."""
        return self.out / "boards.json"

    async def start(self) -> None:
        """Start every board, then write ``boards.json`` (so a reader never sees a path that
        does not exist yet)."""
        self.out.mkdir(parents=True, exist_ok=True)
        started: list[SimBoard] = []
        try:
            for board in self.boards.values():
                await board.start()
                started.append(board)
        except BaseException:
            for board in started:
                await board.stop()
            raise
        document = {"boards": [b.descriptor() for b in self.boards.values()]}
        tmp = self.boards_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(tmp, self.boards_json)
        log.info("event=sim_started boards=%d out=%s", len(self.boards), self.out)

    async def stop(self) -> None:
        """Stop every board and remove ``boards.json``."""
        for board in self.boards.values():
            with contextlib.suppress(Exception):
                await board.stop()
        with contextlib.suppress(FileNotFoundError):
            self.boards_json.unlink()
        log.info("event=sim_stopped out=%s", self.out)

    async def __aenter__(self) -> SimFarm:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Run until cancelled (Ctrl-C), then clean up."""
        async with self:
            await asyncio.Event().wait()
