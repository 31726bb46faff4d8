"""Hosts simulated boards in one asyncio process and describes them in ``boards.json``.

``boards.json`` schema (read by the agent and by tests)::

    {"control": str,
     "boards": [{
        "id": str, "model": "kws01" | "vww01" | "ic01" | "ic02" | "ad01",
        "firmware": "performance" | "energy",
        "dut": {"path": str, "baud": int, "usb": {...}},
        "interface": {"path": str, "baud": int, "usb": {...}} | null,
        "monitor": {"path": str, "baud": int, "kind": "lpm01a", "usb": {...}} | null,
        "usb": {"vid": "0483", "pid": "374B", "serial": str}
    }]}

``path`` is a stable symlink to the device's pty; ``usb`` is the identity the real device
would show (VID, PID and a serial number unique per board), since a pty has none. The
top-level ``usb`` is the DUT's. ``model``, ``firmware`` and the DUT's ``baud`` are those of
the firmware the board runs now: a flash rewrites the file.

``control`` is the absolute path of the control socket (:mod:`farm.sim.control`), which
flashes and power-cycles the boards: ``OUT/control.sock``, or a path under a short temporary
directory when that one is too long for a Unix socket. The images it flashes are written to
``OUT/firmware/<model>-<build>.bin`` (:mod:`farm.sim.firmware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from farm.logs import get_logger
from farm.models import MODELS
from farm.protocol.sww import FRAME_S
from farm.sim.audio import Detector, I2sBus, SyntheticWav
from farm.sim.config import INTERFACE_BAUD, MONITOR_BAUD, BoardConfig, SimConfig
from farm.sim.control import ControlServer
from farm.sim.dut import DutCounter, SimDut
from farm.sim.faults import FaultPlan
from farm.sim.firmware import FlashRefused, write_images
from farm.sim.interface import SimInterface
from farm.sim.latency import LatencyModel
from farm.sim.lpm01a import SimLpm01a
from farm.sim.power import GpioLine, PowerModel, PowerRail
from farm.sim.pty_port import PtyPort
from farm.sim.sww_dut import SimSwwDut
from farm.sim.transcript import Transcript
from farm.sim.wire_pair import WireEnd, wire_pair
from farm.usb_ids import DUT_USB, INTERFACE_USB, MONITOR_USB

log = get_logger("farm.sim.server")

#: How long past its configured boot time a flashed or power-cycled DUT may take to print
#: its banner (a 9600-baud banner, a loaded machine) before the operation stops waiting.
BOOT_MARGIN_S = 2.0


def board_seed(global_seed: int, board: BoardConfig) -> int:
    """The board's own seed: explicit, or derived from the global seed and its id."""
    if board.seed is not None:
        return board.seed
    return int.from_bytes(hashlib.sha256(f"{global_seed}/{board.id}".encode()).digest()[:8], "big")


@dataclass
class SimBoard:
    """One board: its DUT, and if wired for energy an interface board and an LPM01A.

    ``config`` is the board as configured; ``settings`` is the same board with the firmware
    it runs now (a flash through the control server changes its model and build).
    """

    config: BoardConfig
    directory: Path
    seed: int
    transcripts: bool = False
    rail: PowerRail = field(default_factory=PowerRail)
    gpio: GpioLine = field(default_factory=GpioLine)
    """The DUT's timestamp pin (to the energy monitor)."""
    wakeword: GpioLine = field(default_factory=GpioLine)
    """sww01: the DUT's WW_DETECTED pin (to the interface board), idle high."""
    processing: GpioLine = field(default_factory=lambda: GpioLine(level=False))
    """sww01: the DUT's processing (duty-cycle) pin (to the interface board), idle low."""
    i2s: I2sBus = field(default_factory=I2sBus)
    """The interface board's audio link to the DUT."""

    def __post_init__(self) -> None:
        cfg = self.config
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_transcripts: list[Transcript] = []
        # Flashes and power cycles of one board run one at a time.
        self._lock = asyncio.Lock()
        self.power = PowerModel(idle_w=cfg.power.idle_w, active_w=cfg.power.active_w)
        self.dut_port = PtyPort(
            self.directory / "dut", cfg.dut_baud, transcript=self._transcript("dut")
        )
        self.interface_port: PtyPort | None = None
        self.monitor_port: PtyPort | None = None
        self.interface: SimInterface | None = None
        self.monitor: SimLpm01a | None = None
        self._dut_wire: WireEnd | None = None
        if cfg.energy:
            interface_end, self._dut_wire = wire_pair(
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
                wavs={
                    entry.wav_file: SyntheticWav(entry)
                    for truth in cfg.sww.truth_files()
                    for entry in truth.entries
                },
                i2s=self.i2s,
                wakeword=self.wakeword,
                processing=self.processing,
            )
        # Every DUT the board runs hears the monitor's rail and the board's audio through its
        # own relays (made by _make_dut): a DUT replaced by a flash must stop hearing them,
        # and neither a PowerRail nor an I2sBus can unsubscribe.
        self.rail.subscribe(self._relay_rail)
        self.i2s.subscribe(self._relay_i2s)
        self.settings = cfg
        self.dut = self._make_dut(cfg, self._faults("dut", 0), boots=0)
        if cfg.energy and self.monitor_port is not None:
            self.monitor = SimLpm01a(
                board=cfg.id,
                host=self.monitor_port,
                power=self.power,
                gpio=self.gpio,
                rail=self.rail,
                dut_reset=self._reset_dut,
                faults=self._faults("monitor", 2),
            )

    def _faults(self, device: str, stream: int) -> FaultPlan:
        specs = [f for f in self.config.faults if f.target == device]
        return FaultPlan(specs, self.seed + stream, f"{self.config.id}/{device}")

    def _make_dut(self, settings: BoardConfig, faults: FaultPlan, boots: int) -> SimDut:
        """A DUT (not started) running the firmware ``settings`` describes, on the UART that
        build talks on: the DUT's own USB port for the performance build, the wire to the
        interface board for the energy build."""
        uart: PtyPort | WireEnd = self.dut_port
        if settings.firmware == "energy":
            assert self._dut_wire is not None, "settings_for refuses energy builds here"
            uart = self._dut_wire
        # The baud is compiled into the firmware: the new build's applies from its boot.
        uart.baud = settings.dut_baud
        self._dut_rail = PowerRail(on=self.rail.on)
        self._dut_i2s = I2sBus()
        cls = SimSwwDut if settings.model == "sww01" else SimDut
        dut = cls(
            board=settings.id,
            model=MODELS[settings.model],
            build=settings.firmware,
            uart=uart,
            latency=LatencyModel(
                settings.median_s,
                settings.latency.spread,
                settings.latency.tail_probability,
                settings.latency.tail_factor,
                seed=self.seed,
            ),
            quality=settings.target_quality,
            counter=DutCounter(settings.clock_start_us),
            boot_s=settings.boot_s,
            rx_fifo=settings.rx_fifo,
            pulse_hold_s=settings.pulse_hold_s,
            vendor=settings.vendor,
            faults=faults,
            power=self.power,
            gpio=self.gpio,
            rail=self._dut_rail,
            boots=boots,
        )
        if isinstance(dut, SimSwwDut):
            sww = settings.sww
            detector = Detector(
                FRAME_S, frozenset(sww.miss), tuple(sww.false_at_s), sww.delay_s, sww.frames
            )
            dut.attach(self._dut_i2s, self.processing, self.wakeword, detector)
        return dut

    def _relay_rail(self, t: float, on: bool) -> None:
        self._dut_rail.switch(t, on)

    def _relay_i2s(self, t: float, frame: bytes) -> None:
        self._dut_i2s.send(t, frame)

    def _reset_dut(self) -> None:
        # Looked up at call time: the monitor must reset the DUT running now, not the one
        # that ran when it was built.
        self.dut.reset()

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

    def settings_for(self, model: str, build: str) -> BoardConfig:
        """This board running ``model``'s ``build``; raise :class:`FlashRefused` if that
        firmware cannot run here."""
        cfg = self.config
        if model not in MODELS:
            raise FlashRefused(f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}")
        if build == "energy" and not cfg.energy:
            raise FlashRefused(
                f"board {cfg.id} has no interface board (energy: false) and the energy build "
                "talks only through one: flash a performance build"
            )
        update: dict[str, object] = {"model": model, "firmware": build}
        if model != cfg.model:
            # The configured latency, quality and baud describe the configured model's build;
            # another model's image runs at that model's defaults.
            latency = cfg.latency.model_dump() | {"median_s": None}
            update |= {"latency": latency, "quality": None, "baud": None}
        try:
            return BoardConfig.model_validate(cfg.model_dump() | update)
        except ValidationError as exc:
            reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            raise FlashRefused(f"board {cfg.id} cannot run {model} {build}: {reasons}") from None

    async def flash(self, model: str, build: str, *, write_s: float, reenumerate_s: float) -> None:
        """Flash ``model``'s ``build`` like ``st-flash --reset write``: the core halts for the
        ``write_s`` the write takes, the board's USB port re-enumerates (its pty is away for
        ``reenumerate_s``), and the new firmware boots (which also ends a hang).

        Returns once the new firmware has booted, or at once if the monitor keeps the target
        unpowered. Raises :class:`FlashRefused` if the firmware cannot run on this board or
        the target has no power (an ST-LINK cannot write an unpowered MCU).
        """
        settings = self.settings_for(model, build)
        async with self._lock:
            if not self.rail.on:
                raise FlashRefused(
                    f"board {self.config.id}: target not powered (the energy monitor has "
                    "switched its supply off): power it on first"
                )
            previous = self.dut
            log.info(
                "flash_start",
                board=self.config.id,
                model=model,
                build=build,
                from_model=self.settings.model,
                from_build=self.settings.firmware,
            )
            await self._halt()
            await asyncio.sleep(write_s)
            self.settings = settings
            self.dut = self._make_dut(settings, previous.faults, previous.boots)
            await self._replug(reenumerate_s)
            await self._boot()

    async def power_cycle(self, off_s: float) -> None:
        """Cut the board's USB power for ``off_s`` like ``uhubctl --action cycle``: its port
        vanishes and the DUT reboots (which ends a hang). Returns once it has booted, or at
        once if the monitor keeps the target unpowered."""
        async with self._lock:
            log.info("power_cycle_start", board=self.config.id, off_s=off_s)
            await self._halt()
            await self._replug(off_s)
            await self._boot()

    async def _replug(self, down_s: float) -> None:
        if self.dut_port.connected:
            await self.dut_port.disconnect(down_s)
        else:
            # Only while the port is being closed for good: nothing to unplug, same wait.
            await asyncio.sleep(down_s)

    async def _halt(self) -> None:
        await self.dut.stop()
        # A halted core reads no commands (stop() leaves the flag as it was).
        self.dut.ready.clear()

    async def _boot(self) -> None:
        await self.dut.start()
        if not self._dut_rail.on:
            return  # it boots when the monitor switches the rail back on
        try:
            async with asyncio.timeout(self.settings.boot_s + BOOT_MARGIN_S):
                await self.dut.ready.wait()
        except TimeoutError:
            # The monitor cut the rail during the boot: the caller finds out on its next
            # command, exactly as with a real board.
            log.warning("dut_not_booted", board=self.config.id)

    def status(self) -> dict[str, object]:
        """What this board runs now (the control server's ``status`` entry)."""
        return {
            "id": self.config.id,
            "model": self.settings.model,
            "build": self.settings.firmware,
            "boots": self.dut.boots,
            "energy": self.config.energy,
            "powered": self.rail.on,
        }

    def _ports(self) -> list[PtyPort]:
        return [p for p in (self.dut_port, self.interface_port, self.monitor_port) if p is not None]

    def descriptor(self) -> dict[str, object]:
        """This board's entry in ``boards.json``."""
        cfg = self.settings

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
    """Every simulated board of a config, the ``boards.json`` that describes them, the
    firmware images they can be flashed with and the control socket that flashes and
    power-cycles them."""

    def __init__(self, config: SimConfig, out: str | Path, *, transcripts: bool = False) -> None:
        self.config = config
        self.out = Path(out).absolute()
        self.boards = {
            b.id: SimBoard(b, self.out / b.id, board_seed(config.seed, b), transcripts)
            for b in config.boards
        }
        self.control = ControlServer(self.boards, on_change=self._write_boards_json)
        """Tests shorten its ``write_s``, ``reenumerate_s`` and ``off_s``."""
        # Two boards flashed at once both rewrite boards.json.
        self._json_lock = asyncio.Lock()

    @property
    def boards_json(self) -> Path:
        """Where the board descriptors are written."""
        return self.out / "boards.json"

    async def start(self) -> None:
        """Write the firmware images, start every board and the control socket, then write
        ``boards.json`` (so a reader never sees a path that does not exist yet)."""
        await asyncio.to_thread(self.out.mkdir, parents=True, exist_ok=True)
        started: list[SimBoard] = []
        try:
            await asyncio.to_thread(write_images, self.out, MODELS)
            for board in self.boards.values():
                await board.start()
                started.append(board)
            await self.control.start(self.out / "control.sock")
        except BaseException:
            await self.control.stop()
            for board in started:
                await board.stop()
            raise
        await self._write_boards_json()
        log.info("sim_started", boards=len(self.boards), out=self.out, control=self.control.path)

    async def stop(self) -> None:
        """Stop the control socket (cancelling any flash or power cycle in progress), every
        board, and remove ``boards.json``."""
        await self.control.stop()
        for board in self.boards.values():
            with contextlib.suppress(Exception):
                await board.stop()
        with contextlib.suppress(FileNotFoundError):
            self.boards_json.unlink()
        log.info("sim_stopped", out=self.out)

    async def _write_boards_json(self) -> None:
        async with self._json_lock:
            document = {
                "control": str(self.control.path),
                "boards": [b.descriptor() for b in self.boards.values()],
            }
            await asyncio.to_thread(_replace_json, self.boards_json, document)

    async def __aenter__(self) -> SimFarm:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Run until cancelled (Ctrl-C), then clean up."""
        async with self:
            await asyncio.Event().wait()


def _replace_json(path: Path, document: Mapping[str, object]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    # rename(2) is atomic: a reader sees the old document or the new one, never half of one.
    os.replace(tmp, path)
