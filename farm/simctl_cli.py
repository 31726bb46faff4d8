"""``farm simctl ...``: flash and power-cycle simulated boards as ``st-flash`` and ``uhubctl``
do real ones (registered in ``farm.cli`` as the ``simctl`` group; also runs as
``python -m farm.simctl_cli``).

Each command sends one request to the control socket of a running ``farm sim`` (its path is
``control`` in ``boards.json``; see :mod:`farm.sim.control`), prints one line on success and
exits 0; on any failure it prints ``error: ...`` on stderr and exits 1.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Annotated, Any

import typer

simctl_app = typer.Typer(
    help="Flash and power-cycle simulated boards (farm sim) through their control socket.",
    no_args_is_help=True,
    add_completion=False,
)

#: A flash is a write, a USB re-enumeration and a boot: under a second in the simulator.
#: The bound only keeps a wedged simulator from hanging the caller (a power cycle adds its
#: off time).
REPLY_TIMEOUT_S = 30.0
#: A status reply lists every board: far below this even for hundreds.
MAX_REPLY_BYTES = 1 << 20

ControlOption = Annotated[
    Path,
    typer.Option(help="The simulator's control socket (`control` in its boards.json)"),
]
BoardOption = Annotated[str, typer.Option(help="Board id (`id` in boards.json)")]


class SimctlError(Exception):
    """A request that failed; the message says what happened and what to check."""


def request(control: Path, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Send ``message`` to the control socket at ``control``; return the reply once it says
    ``ok``. Raises :class:`SimctlError` if the simulator cannot be reached, does not reply in
    ``timeout_s`` or refuses the request."""
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(control))
        except FileNotFoundError:
            raise SimctlError(
                f"no control socket at {control}: the simulator is not running (start it with "
                "`farm sim --out DIR`; the socket is `control` in DIR/boards.json)"
            ) from None
        except ConnectionRefusedError:
            raise SimctlError(
                f"nothing listens on {control}: the simulator is not running (stale socket file)"
            ) from None
        except OSError as exc:
            raise SimctlError(f"cannot connect to {control}: {exc}") from None
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            raw = _read_line(sock, deadline)
        except TimeoutError:
            raise SimctlError(
                f"no reply from the simulator at {control} within {timeout_s:.0f} s"
            ) from None
        except OSError as exc:
            raise SimctlError(f"lost the connection to {control}: {exc}") from None
    try:
        reply = json.loads(raw)
    except ValueError:
        raise SimctlError(f"unreadable reply from {control}: {raw[:200]!r}") from None
    if not isinstance(reply, dict):
        raise SimctlError(f"unreadable reply from {control}: {raw[:200]!r}")
    if not reply.get("ok"):
        raise SimctlError(str(reply.get("error", f"request refused: {reply}")))
    return reply


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    buffer = bytearray()
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise SimctlError("the simulator closed the connection without replying")
        buffer += chunk
        if len(buffer) > MAX_REPLY_BYTES:
            raise SimctlError(f"reply over {MAX_REPLY_BYTES} bytes")
    return bytes(buffer[: buffer.index(b"\n")])


def _run(control: Path, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    try:
        return request(control, message, timeout_s)
    except SimctlError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@simctl_app.command()
def flash(
    image: Annotated[Path, typer.Argument(help="Firmware image (DIR/firmware/*.bin)")],
    control: ControlOption,
    board: BoardOption,
) -> None:
    """Flash IMAGE onto a simulated board, as `st-flash --reset write IMAGE 0x08000000`."""
    # Absolute: the simulator resolves paths against its own working directory.
    message = {"op": "flash", "board": board, "image": str(image.absolute())}
    reply = _run(control, message, REPLY_TIMEOUT_S)
    typer.echo(
        f"flashed {reply['board']}: {reply['model']} {reply['build']} in {reply['seconds']:.2f} s"
    )


@simctl_app.command("power-cycle")
def power_cycle(
    control: ControlOption,
    board: BoardOption,
    off_s: Annotated[
        float | None,
        typer.Option(min=0.0, help="Seconds without power (default: the simulator's, 0.3)"),
    ] = None,
) -> None:
    """Cut a simulated board's USB power and restore it, as `uhubctl --action cycle`."""
    message: dict[str, Any] = {"op": "power-cycle", "board": board}
    if off_s is not None:
        message["off_s"] = off_s
    reply = _run(control, message, REPLY_TIMEOUT_S + (off_s or 0.0))
    typer.echo(
        f"power-cycled {reply['board']}: off {reply['off_s']:.2f} s, "
        f"{reply['model']} {reply['build']} booted (boot {reply['boots']}) "
        f"in {reply['seconds']:.2f} s"
    )


@simctl_app.command()
def status(control: ControlOption) -> None:
    """Print what every simulated board runs: one line per board."""
    reply = _run(control, {"op": "status"}, REPLY_TIMEOUT_S)
    for b in reply["boards"]:
        typer.echo(
            f"{b['id']} {b['model']} {b['build']} boots={b['boots']} "
            f"energy={'yes' if b['energy'] else 'no'} powered={'yes' if b['powered'] else 'no'}"
        )


if __name__ == "__main__":
    simctl_app()
