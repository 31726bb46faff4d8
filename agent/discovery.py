"""Finding a board's serial devices: list what is connected, resolve config matches to
device paths, and suggest matches for what is plugged in.

Identical boards share a USB VID:PID and ``/dev/ttyACM*`` numbers follow the plugging
order, so the config matches devices by USB serial number (:class:`agent.config.Match`).
Simulated boards of ``farm sim`` have no USB identity of their own; their ``boards.json``
gives each device the identity the real one would show, and :func:`list_ports` lists them
next to the USB devices, so the same config and the same code serve both.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from agent.config import BoardConfig, Match, Role
from farm.logs import get_logger
from farm.usb_ids import DUT_USB, INTERFACE_USB, MONITOR_USB

log = get_logger("agent.discovery")

BY_ID = Path("/dev/serial/by-id")

#: Likely role of a device by its VID:PID, and what to say about it.
ROLE_HINTS: dict[str, tuple[Role, str]] = {
    ":".join(DUT_USB): ("dut", "ST-LINK/V2-1: likely the DUT (a NUCLEO board)"),
    "0483:3752": ("dut", "ST-LINK/V2-1: likely the DUT (a NUCLEO board)"),
    ":".join(INTERFACE_USB): (
        "interface",
        "STLINK-V3: likely the interface board (STM32H573I-DK; newer NUCLEO boards have one too)",
    ),
    ":".join(MONITOR_USB): ("monitor", "STM32 virtual COM port: likely the LPM01A energy monitor"),
}

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ROLE_NAMES = {"dut": "DUT", "interface": "interface board", "monitor": "energy monitor"}
_BRIEF_MAX = 8
_NO_FOLD = 1 << 20  # YAML line width: a long path stays on one line


class DiscoveryError(Exception):
    """Serial devices could not be listed or found; the message says which and why."""


class MatchError(DiscoveryError):
    """A match selects no device or several; ``candidates`` are the ones it selects."""

    def __init__(self, message: str, candidates: Sequence[PortInfo] = ()) -> None:
        super().__init__(message)
        self.candidates = tuple(candidates)


@dataclass(frozen=True, slots=True)
class PortInfo:
    """One serial device as discovery sees it."""

    device: str
    """The device path (``/dev/ttyACM0``; a simulated device's stable symlink)."""
    vid: str | None = None
    """USB vendor id, 4 upper-case hex digits."""
    pid: str | None = None
    """USB product id, 4 upper-case hex digits."""
    serial: str | None = None
    """USB serial number."""
    by_id: str | None = None
    """The ``/dev/serial/by-id`` symlink pointing at the device, if any."""
    description: str | None = None
    manufacturer: str | None = None
    source: str = "usb"
    """``usb``; ``system`` for a serial port without USB identity (a Pi's UART);
    ``sim:<boards.json>`` for a simulated device; ``path`` for a path match taken as given."""

    @property
    def vid_pid(self) -> str | None:
        """``VID:PID``, or ``None`` without a USB identity."""
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid}:{self.pid}"

    @property
    def path(self) -> str:
        """The path to open: the by-id link when there is one (it survives re-enumeration
        after a power cycle), else the device path."""
        return self.by_id or self.device

    def brief(self) -> str:
        """One line for messages: path, USB identity and description."""
        ident = f"{self.vid_pid or '-'} serial {self.serial or '-'}"
        return f"{self.device} [{ident}] {self.description or ''}".rstrip()


@dataclass(frozen=True, slots=True)
class ResolvedBoard:
    """The device paths of one board's serial devices."""

    dut: str
    interface: str | None = None
    monitor: str | None = None


def list_ports(sim_boards: Sequence[Path] = ()) -> list[PortInfo]:
    """Every serial device: USB (and other system) ports, then the devices of each
    ``farm sim`` ``boards.json`` in ``sim_boards``.

    Raises :class:`DiscoveryError` naming the file when a ``boards.json`` is missing or
    not one ``farm sim`` wrote.
    """
    from serial.tools.list_ports import comports  # the agent extra

    links = _by_id_links()
    ports = [
        PortInfo(
            device=p.device,
            vid=_hex(p.vid),
            pid=_hex(p.pid),
            serial=p.serial_number,
            by_id=links.get(os.path.realpath(p.device)),
            description=None if p.description in (None, "n/a") else p.description,
            manufacturer=p.manufacturer,
            source="usb" if p.vid is not None else "system",
        )
        for p in comports()
    ]
    ports.sort(key=lambda p: p.device)
    for path in sim_boards:
        ports += sim_ports(path)
    return ports


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:04X}"


def _by_id_links() -> dict[str, str]:
    """Device path -> its ``/dev/serial/by-id`` link (udev creates them for USB serial
    devices only; the folder is missing when none is plugged in)."""
    try:
        links = list(BY_ID.iterdir())
    except OSError:
        return {}
    return {os.path.realpath(link): str(link) for link in sorted(links)}


def sim_ports(boards_json: Path) -> list[PortInfo]:
    """The devices of a ``farm sim`` ``boards.json`` with the USB identities it gives them.

    A device whose path is gone (a simulated unplug) is left out, as an unplugged USB
    device is.
    """
    try:
        document = json.loads(Path(boards_json).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DiscoveryError(
            f"{boards_json}: not found: is `farm sim` running? (it removes boards.json "
            "when it stops)"
        ) from None
    except OSError as exc:
        raise DiscoveryError(f"{boards_json}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise DiscoveryError(f"{boards_json}: not JSON: {exc}") from None
    ports: list[PortInfo] = []
    try:
        for board in document["boards"]:
            devices = (
                ("dut", board["dut"]),
                ("interface", board.get("interface")),
                ("monitor", board.get("monitor")),
            )
            for role, entry in devices:
                if entry is None:
                    continue
                if not os.path.exists(entry["path"]):
                    log.info("sim_device_absent", board=board["id"], role=role)
                    continue
                usb = entry["usb"]
                ports.append(
                    PortInfo(
                        device=entry["path"],
                        vid=usb["vid"].upper(),
                        pid=usb["pid"].upper(),
                        serial=usb["serial"],
                        description=(
                            f"simulated {_ROLE_NAMES[role]} of {board['id']} ({board['model']})"
                        ),
                        manufacturer="tinyfarm farm sim",
                        source=f"sim:{boards_json}",
                    )
                )
    except (KeyError, TypeError, AttributeError) as exc:
        raise DiscoveryError(
            f"{boards_json}: not a farm sim boards file ({type(exc).__name__}: {exc})"
        ) from None
    return ports


def matches(match: Match, port: PortInfo) -> bool:
    """Whether ``port`` satisfies every field of ``match``."""
    if match.serial is not None and (
        port.serial is None or port.serial.casefold() != match.serial.casefold()
    ):
        return False
    if match.vid_pid is not None and port.vid_pid != match.vid_pid:
        return False
    return match.path is None or _same_path(match.path, port)


def _same_path(path: str, port: PortInfo) -> bool:
    if path in (port.device, port.by_id):
        return True
    if _URL.match(path):
        return False
    # /dev/ttyACM0 and its by-id link, or a sim symlink and its /dev/pts/N, are one device.
    return os.path.realpath(path) == os.path.realpath(port.device)


def resolve(match: Match, ports: Sequence[PortInfo]) -> PortInfo:
    """The one device of ``ports`` that ``match`` selects.

    A match by ``path`` alone also accepts a path that is not listed if it exists (a plain
    tty) or is a pyserial URL (``socket://``): it is returned as given. Raises
    :class:`MatchError` when no device or several devices match.
    """
    found = [p for p in ports if matches(match, p)]
    if len(found) == 1:
        return found[0]
    if found:
        raise MatchError(_ambiguous(match, found), found)
    path = match.path
    if (
        path is not None
        and match.serial is None
        and match.vid_pid is None
        and (_URL.match(path) or os.path.exists(path))
    ):
        return PortInfo(device=path, source="path")
    raise MatchError(_no_match(match, ports))


def _no_match(match: Match, ports: Sequence[PortInfo]) -> str:
    message = f"no serial device matches {match.describe()}"
    # A PC's ttyS* or a Pi's UART is never a board: listing them only hides the point.
    ports = [p for p in ports if p.source != "system"]
    if not ports:
        return message + "; no USB serial device is connected"
    if match.serial is not None:
        # The right device with another field wrong is the usual slip: say which.
        same = [p for p in ports if matches(Match(serial=match.serial), p)]
        if same:
            return message + f"; the device with serial {match.serial} is {same[0].brief()}"
    return message + "; connected: " + _brief_list(ports)


def _ambiguous(match: Match, found: Sequence[PortInfo]) -> str:
    message = f"{len(found)} devices match {match.describe()}: {_brief_list(found)}; "
    serials = [p.serial for p in found if p.serial]
    if match.serial is None and len(set(serials)) == len(found):
        return message + f"match by serial number to tell them apart (e.g. serial: {serials[0]})"
    return message + "add a field (serial, or the /dev/serial/by-id path) that tells them apart"


def _brief_list(ports: Sequence[PortInfo]) -> str:
    shown = "; ".join(p.brief() for p in ports[:_BRIEF_MAX])
    if len(ports) > _BRIEF_MAX:
        shown += f"; and {len(ports) - _BRIEF_MAX} more"
    return shown


def resolve_board(board: BoardConfig, ports: Sequence[PortInfo]) -> ResolvedBoard:
    """The device paths of ``board``'s DUT, interface board and monitor.

    Raises :class:`MatchError` naming the board and the role when a match selects no
    device or several, or when two roles select the same device.
    """
    paths: dict[str, str] = {}
    for role, device in board.devices():
        try:
            port = resolve(device.match, ports)
        except MatchError as exc:
            raise MatchError(f"board {board.id}: {role}: {exc}", exc.candidates) from None
        twin = next((r for r, p in paths.items() if p == port.path), None)
        if twin is not None:
            raise MatchError(f"board {board.id}: {role} and {twin} both match {port.brief()}")
        paths[role] = port.path
    return ResolvedBoard(**paths)


def suggest(ports: Sequence[PortInfo]) -> str:
    """A ready-to-paste YAML match per device, as YAML documents separated by ``---``.

    Each matches by serial number (plus VID:PID; by port path for a device without a
    serial number) under its likely role, with comments naming the device.
    """
    return "---\n".join(_snippet(p) for p in ports)


def _snippet(port: PortInfo) -> str:
    hint = ROLE_HINTS.get(port.vid_pid or "")
    about = ", ".join(x for x in (port.description, port.manufacturer) if x)
    lines = [f"# {port.device}" + (f" ({port.by_id})" if port.by_id else "")]
    if about:
        lines.append(f"# {about}")
    match: dict[str, str] = {}
    if port.serial:
        match["serial"] = port.serial
    if port.vid_pid:
        match["vid_pid"] = port.vid_pid
    if not port.serial:
        lines.append("# no USB serial number: matched by its port path (keep the cable there)")
        match["path"] = port.path
    body: dict[str, object]
    if hint is not None:
        role, what = hint
        lines.append(f"# {port.vid_pid} {what}")
        body = {role: {"match": match}}
    else:
        lines.append("# unknown device: use it as a dut, interface or monitor match")
        body = {"match": match}
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False, width=_NO_FOLD)
