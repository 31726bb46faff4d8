"""Reaching one board's devices: finding its ports (again after every USB re-enumeration),
asking the DUT what it runs, power-cycling it and flashing it.

Every port is found through the board's match (USB serial number by default) each time it is
needed, never cached: a flash or a power cycle makes the USB device disappear and come back,
possibly under another ``/dev/ttyACMn``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from agent.config import BoardConfig, Build, render_command
from agent.discovery import MatchError, ResolvedBoard, list_ports, resolve_board
from agent.dut_client import DirectChannel, DutClient
from agent.energy_monitor import MonitorTarget
from agent.interface_client import InterfaceClient
from agent.lpm01a_client import Lpm01aClient
from agent.serial_link import SerialLink
from farm.board_timing import (
    IDLE_BUSY_LIMIT_S,
    POWER_COMMAND_TIMEOUT_S,
    REENUMERATION_S,
    check_bauds,
)
from farm.logs import get_logger
from farm.models import ENERGY_BAUD, MODELS
from farm.protocol.interface import HOST_BAUD as INTERFACE_BAUD
from farm.protocol.lpm01a import HOST_BAUD as MONITOR_BAUD

log = get_logger("agent.board_access")

#: Supply for the DUT when the monitor powers it outside a run (the reference 1.8 V).
DEFAULT_SUPPLY_V = 1.8


class BoardUnavailable(Exception):
    """The board's ports cannot be found, or it cannot do what was asked (no flash
    command, no image, no power-cycle method)."""


class CommandFailed(Exception):
    """A flash or power-cycle command failed; the message carries the tool's last lines."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What the DUT says it runs."""

    model: str
    build: str
    """``performance`` (answers ``timestamp`` with a lap) or ``energy`` (pin pulse only)."""
    vendor: str
    baud: int | None
    """The direct link's baud that worked (``None`` through the interface board)."""
    profile: str | None = None
    """The DUT's ``profile`` answer (``m-profile-[...]``)."""


class BoardAccess:
    """One board's devices, as the agent config describes them."""

    def __init__(self, cfg: BoardConfig, sim_boards: list[Path]) -> None:
        self.cfg = cfg
        self.sim_boards = sim_boards
        self.last_baud: int | None = None
        self.last_energy_baud: int | None = None
        """The energy firmware's baud after a flash: its model's (sww01's energy firmware
        talks at 115200, the others' at 9600)."""
        self._kept: SerialLink | None = None
        """The DUT's port as a run's health check left it open (:meth:`identify` with
        ``keep``), for the run to take (:meth:`take_link`)."""

    # -- ports ----------------------------------------------------------------------------------

    async def resolve(self) -> ResolvedBoard:
        """The board's device paths now (``MatchError`` if a device is missing)."""
        # Enumerating reads sysfs and udev links: off the event loop.
        return await asyncio.to_thread(self._resolve)

    def _resolve(self) -> ResolvedBoard:
        resolved = resolve_board(self.cfg, list_ports(self.sim_boards))
        missing = [p for p in _local_paths(resolved) if not Path(p).exists()]
        if missing:
            raise MatchError(f"board {self.cfg.id}: {', '.join(missing)} does not exist (yet)")
        return resolved

    async def wait_for_ports(self, timeout_s: float = REENUMERATION_S) -> ResolvedBoard:
        """Resolve, retrying while the devices re-enumerate."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while True:
            try:
                return await self.resolve()
            except MatchError as exc:
                problem = str(exc)
            if loop.time() >= give_up:
                raise BoardUnavailable(
                    f"board {self.cfg.id}: devices not back after {timeout_s:.0f} s: {problem}"
                )
            await asyncio.sleep(0.2)

    def monitor_target(self, ports: ResolvedBoard) -> MonitorTarget | None:
        """The energy monitor an energy run opens: the LPM01A at its resolved port, or the
        JS220 by its serial number (the joulescope driver finds it); ``None`` without one."""
        monitor = self.cfg.monitor
        if monitor is None:
            return None
        if monitor.kind == "js220":
            return MonitorTarget("js220", monitor.js220_serial)
        return MonitorTarget("lpm01a", ports.monitor)

    @property
    def supply_mv(self) -> int:
        """The DUT supply the monitor sets outside a benchmark's own voltage."""
        return round((self.cfg.supply_voltage or DEFAULT_SUPPLY_V) * 1000)

    # -- identity -------------------------------------------------------------------------------

    async def identify(self, prefer: str | None = None, *, keep: bool = False) -> Identity:
        """Ask the DUT its name, model and build: directly for the performance build, through
        the interface board (powered by the monitor) for the energy build. ``prefer`` is the
        build it ran last, tried first. ``keep``: a DUT that answered on its own port keeps
        it open for the run about to start (:meth:`take_link`), which then neither reopens
        it nor waits out another resync."""
        await self.drop_kept()
        ports = await self.wait_for_ports()
        builds = ["performance"]
        if self.cfg.energy_capable:
            builds = ["energy", "performance"] if prefer != "performance" else [*builds, "energy"]
        problems: list[str] = []
        for build in builds:
            try:
                if build == "energy":
                    return await self._identify_energy(ports)
                return await self._identify_direct(ports, keep)
            except Exception as exc:  # every way in failed: report them all
                problems.append(f"{build} build: {type(exc).__name__}: {exc}")
        raise BoardUnavailable(
            f"board {self.cfg.id}: the DUT did not answer: {'; '.join(problems)}"
        )

    @property
    def bauds(self) -> list[int]:
        """The DUT bauds a health check tries on the DUT's own port, in order: the
        configured one, the one it answered at last, every model's reference rate."""
        return check_bauds([self.cfg.baud.performance, self.last_baud])

    async def _identify_direct(self, ports: ResolvedBoard, keep: bool) -> Identity:
        if self.cfg.energy_capable:
            await self.power_on(ports)
        problems: list[str] = []
        for baud in self.bauds:
            link = await SerialLink.open(ports.dut, baud)
            try:
                dut = DutClient(DirectChannel(link, busy_limit_s=IDLE_BUSY_LIMIT_S))
                await dut.resync()
                identity = await _ask(dut, baud)
                self.last_baud = baud
                if keep:
                    self._kept = link
                return identity
            except Exception as exc:  # the next baud may be the right one
                problems.append(f"{baud} baud: {exc}")
                log.info("identify_no_answer", board=self.cfg.id, baud=baud, error=str(exc))
            finally:
                if self._kept is not link:
                    await link.close()
        raise BoardUnavailable("; ".join(problems))

    async def take_link(self, port: str, baud: int) -> SerialLink | None:
        """The DUT's port the health check kept open, if it is ``port`` at ``baud`` and still
        open (it is the caller's to close then); else None, and a kept link is closed."""
        link, self._kept = self._kept, None
        if link is not None and link.is_open and (link.port, link.baud) == (port, baud):
            return link
        if link is not None:
            await link.close()
        return None

    async def drop_kept(self) -> None:
        """Close the port a health check kept open, if no run took it."""
        link, self._kept = self._kept, None
        if link is not None:
            await link.close()

    async def _identify_energy(self, ports: ResolvedBoard) -> Identity:
        assert ports.interface is not None
        # An LPM01A supplies the DUT: its set-up switches the target off, so power it. A
        # JS220 only measures: the DUT has its own supply.
        if ports.monitor is not None:
            async with await Lpm01aClient.open(ports.monitor, baud=MONITOR_BAUD) as lpm:
                await lpm.setup(self.supply_mv)
                await lpm.power(True, voltage_mv=self.supply_mv)
        link = await SerialLink.open(ports.interface, INTERFACE_BAUD)
        try:
            interface = InterfaceClient(link, dut_baud=self.energy_baud)
            await interface.resync()
            return await _ask(interface.dut(None), None)
        finally:
            await link.close()

    @property
    def energy_baud(self) -> int:
        """The DUT-side baud of the interface board for the energy firmware: the one its
        last flash gave (its model's), else the configured one, else 9600. Never guessed:
        a ``dut`` command at the wrong baud leaves the board's passthrough waiting for an
        ``m-ready`` that cannot come, and the sww01 firmware, which prints nothing at boot,
        would not free it even across a power cycle."""
        return self.last_energy_baud or self.cfg.baud.energy or ENERGY_BAUD

    async def power_on(self, ports: ResolvedBoard) -> None:
        """Make sure an LPM01A supplies the DUT (it is the DUT's supply on a board it
        measures, and an energy run's teardown switches it off); a JS220 board has no
        resolved monitor port and its DUT its own supply."""
        if ports.monitor is None:
            return
        async with await Lpm01aClient.open(ports.monitor, baud=MONITOR_BAUD) as lpm:
            await lpm.command("htc")
            await lpm.power(True, voltage_mv=self.supply_mv)

    # -- power and firmware ---------------------------------------------------------------------

    async def power_cycle(self) -> str:
        """Cut the DUT's power and restore it with the configured method; return what was
        done. Waits for the ports to come back."""
        await self.drop_kept()
        method = self.cfg.power_cycle
        if method.method == "none":
            raise BoardUnavailable(f"board {self.cfg.id} has no power-cycle method configured")
        ports = await self.wait_for_ports()
        if method.method == "monitor":
            assert ports.monitor is not None
            async with await Lpm01aClient.open(ports.monitor, baud=MONITOR_BAUD) as lpm:
                # The runner's set-up switches the target off; then the supply comes back.
                await lpm.setup(self.supply_mv)
                await asyncio.sleep(method.off_s)
                await lpm.power(True, voltage_mv=self.supply_mv)
            done = f"monitor pwr off, {method.off_s:g} s, pwr on"
        else:
            assert method.command is not None
            await self._command(method.command, ports, POWER_COMMAND_TIMEOUT_S, "power-cycle")
            done = f"command {method.command.split()[0]}"
        await self.wait_for_ports()
        log.info("power_cycled", board=self.cfg.id, how=done)
        return done

    def image(self, model: str, build: Build) -> Path | None:
        """The configured image for ``model`` and ``build``, if any."""
        return self.cfg.firmware.images.get(model, {}).get(build)

    async def flash(self, model: str, build: Build) -> float:
        """Flash the configured image with the flash command; return the seconds it took.
        Waits for the ports to re-enumerate."""
        await self.drop_kept()
        image = self.image(model, build)
        if image is None:
            raise BoardUnavailable(f"board {self.cfg.id} has no {build} image for {model}")
        if self.cfg.firmware.flash is None:
            raise BoardUnavailable(f"board {self.cfg.id} has no flash command configured")
        ports = await self.wait_for_ports()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._command(
            self.cfg.firmware.flash, ports, self.cfg.firmware.timeout_s, "flash", image=image
        )
        await self.wait_for_ports()
        seconds = loop.time() - started
        # The new image talks at its model's default rate, not the old one's: tried before
        # it (after a rate the board's config sets, an operator's override), the old rate
        # would cost the next check a whole resync timeout (ad01 runs at 921600, the others
        # at 115200).
        known = MODELS.get(model)
        self.last_baud = known.default_baud if known is not None else None
        self.last_energy_baud = known.energy_baud if known is not None else None
        log.info("flashed", board=self.cfg.id, model=model, build=build, s=seconds)
        return seconds

    async def _command(
        self,
        template: str,
        ports: ResolvedBoard,
        timeout_s: float,
        what: str,
        *,
        image: Path | None = None,
    ) -> None:
        values = {
            "board": self.cfg.id,
            "serial": self.cfg.dut.match.serial or "",
            "port": ports.dut,
            "target": self.cfg.firmware.target or "",
            "image": str(image) if image is not None else "",
        }
        argv = render_command(template, values)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            raise CommandFailed(f"{what}: cannot run {argv[0]!r}: {exc.strerror}") from None
        try:
            async with asyncio.timeout(timeout_s):
                output, _ = await process.communicate()
        except BaseException as exc:
            # Timed out, or the agent is stopping: never leave a flash tool running against
            # a board the next job (or the next agent) will talk to.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
            if isinstance(exc, TimeoutError):
                raise CommandFailed(
                    f"{what}: {argv[0]} did not finish within {timeout_s:g} s"
                ) from None
            raise
        if process.returncode != 0:
            tail = " | ".join(output.decode(errors="replace").strip().splitlines()[-3:])
            raise CommandFailed(f"{what}: {argv[0]} exited {process.returncode}: {tail}")


async def _ask(dut: DutClient, baud: int | None) -> Identity:
    vendor = await dut.name()
    profile, model = await dut.profile()
    build = "energy" if await dut.timestamp() is None else "performance"
    return Identity(model, build, vendor, baud, profile)


def _local_paths(resolved: ResolvedBoard) -> list[str]:
    paths = [resolved.dut, resolved.interface, resolved.monitor]
    return [p for p in paths if p is not None and "://" not in p]
