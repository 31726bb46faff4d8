"""The simulator's control socket: what ``st-flash`` and ``uhubctl`` do to a real board,
done to a simulated one.

An agent flashes a board and power-cycles it with configured shell commands; for a simulated
board those commands are ``python -m farm.simctl_cli ...`` (see :func:`flash_command` and
:func:`power_cycle_command`), which talk to this server over a Unix socket.

Protocol: newline-delimited JSON, one request per line (at most ``MAX_REQUEST_BYTES``), one
JSON reply line per request, in order, on the same connection:

``{"op": "flash", "board": ID, "image": ABSOLUTE_PATH}``
    Reads the image (:mod:`farm.sim.firmware`), refuses a build the board cannot run (the
    energy build needs an interface board), halts the DUT for the write, re-enumerates its
    USB port (the pty vanishes and comes back) and boots the new firmware. Reply
    ``{"ok": true, "op": "flash", "board", "model", "build", "seconds"}``.
``{"op": "power-cycle", "board": ID, "off_s": S}`` (``off_s`` optional)
    The board's USB port loses power for ``off_s`` seconds; the DUT reboots. Reply
    ``{"ok": true, "op": "power-cycle", "board", "model", "build", "off_s", "boots",
    "seconds"}``.
``{"op": "status"}``
    Reply ``{"ok": true, "op": "status", "boards": [{"id", "model", "build", "boots",
    "energy", "powered"}, ...]}``.

Any failure is ``{"ok": false, "error": MESSAGE}``; the server keeps serving. A line over
the limit gets that reply and the connection is closed, since the rest of the line cannot be
told apart from the next request. A flash or power-cycle reply is sent once the port is back
and the DUT has booted, so the caller may open the port at once (a real board can take
longer to re-enumerate: an agent should still retry opening its port).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from farm.logs import get_logger
from farm.sim.firmware import FirmwareImageError, FlashRefused, read_image

log = get_logger("farm.sim.control")

#: A request is a few hundred bytes; the bound leaves room for a PATH_MAX image path.
MAX_REQUEST_BYTES = 16 * 1024
#: The longest power cut a request may ask for: longer is a typo, not a test.
MAX_OFF_S = 60.0
#: ``sun_path`` holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
DEFAULT_WRITE_S = 0.2
DEFAULT_REENUMERATE_S = 0.3
DEFAULT_OFF_S = 0.3


class ControlledBoard(Protocol):
    """What the control server needs of a board (:class:`farm.sim.server.SimBoard`)."""

    async def flash(self, model: str, build: str, *, write_s: float, reenumerate_s: float) -> None:
        """Flash ``model``'s ``build``; return once it has booted."""
        ...

    async def power_cycle(self, off_s: float) -> None:
        """Cut the board's USB power for ``off_s``; return once the DUT has booted."""
        ...

    def status(self) -> dict[str, object]:
        """What the board runs now: ``id``, ``model``, ``build``, ``boots`` ..."""
        ...


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Flash(_Request):
    op: Literal["flash"]
    board: str
    image: str


class _PowerCycle(_Request):
    op: Literal["power-cycle"]
    board: str
    off_s: float | None = Field(None, ge=0, le=MAX_OFF_S, allow_inf_nan=False)


class _Status(_Request):
    op: Literal["status"]


_REQUEST: TypeAdapter[_Flash | _PowerCycle | _Status] = TypeAdapter(
    Annotated[_Flash | _PowerCycle | _Status, Field(discriminator="op")]
)
_OPS = ("flash", "power-cycle", "status")


class RequestError(ValueError):
    """A request the server refuses; the message is the reply's ``error``."""


class ControlServer:
    """Serves the control protocol for ``boards`` on a Unix socket.

    ``on_change`` runs after every flash (the farm rewrites ``boards.json``). ``write_s``,
    ``reenumerate_s`` and ``off_s`` are the simulated durations (tests shorten them).
    """

    def __init__(
        self,
        boards: Mapping[str, ControlledBoard],
        on_change: Callable[[], Awaitable[None]],
        *,
        write_s: float = DEFAULT_WRITE_S,
        reenumerate_s: float = DEFAULT_REENUMERATE_S,
        off_s: float = DEFAULT_OFF_S,
    ) -> None:
        self.boards = boards
        self.on_change = on_change
        self.write_s = write_s
        self.reenumerate_s = reenumerate_s
        self.off_s = off_s
        self._path: Path | None = None
        self._temp_dir: Path | None = None
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def path(self) -> Path | None:
        """The socket's absolute path while the server runs."""
        return self._path

    async def start(self, preferred: Path) -> None:
        """Listen on ``preferred``, or on a socket under a new short temporary directory if
        ``preferred`` is too long for ``AF_UNIX``; :attr:`path` says which."""
        if self._server is not None:
            raise RuntimeError(f"control server already listening on {self._path}")
        path, self._temp_dir = await asyncio.to_thread(socket_path, preferred)
        try:
            self._server = await asyncio.start_unix_server(
                self._accept, path=str(path), limit=MAX_REQUEST_BYTES
            )
            self._identity = await asyncio.to_thread(_identity, path)
        except BaseException:
            if self._server is not None:
                self._server.close()
                self._server = None
            # Not the socket path: if binding failed, whatever is there is not ours.
            await self._remove_files(None)
            raise
        self._path = path
        log.info("control_listening", path=path)

    async def stop(self) -> None:
        """Stop listening, cancel every connection (and the flash or power cycle it runs),
        remove the socket file. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        path, self._path = self._path, None
        if path is not None:
            await self._remove_files(path)
            log.info("control_stopped", path=path)

    async def _remove_files(self, path: Path | None) -> None:
        temp_dir, self._temp_dir = self._temp_dir, None
        identity, self._identity = self._identity, None

        def remove() -> None:
            # Only our own socket: another simulator may have taken the path over meanwhile.
            if path is not None and identity is not None and _identity(path) == identity:
                path.unlink(missing_ok=True)
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)

        await asyncio.to_thread(remove)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The server's own task per connection (rather than the one asyncio makes for a
        # coroutine callback), so stop() can cancel it without asyncio logging the cancel.
        task = asyncio.get_running_loop().create_task(
            self._serve(reader, writer), name="control-connection"
        )
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    # asyncio's limit overrun: the reader dropped what it held of the line.
                    await _send(writer, _error(f"request over {MAX_REQUEST_BYTES} bytes"))
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                await _send(writer, await self.handle(line))
        except ConnectionError as exc:
            log.info("control_client_gone", error=exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def handle(self, line: bytes) -> dict[str, object]:
        """The reply to one request line (never raises, except when cancelled)."""
        try:
            request = _parse(line)
            if isinstance(request, _Flash):
                return await self._flash(request)
            if isinstance(request, _PowerCycle):
                return await self._power_cycle(request)
            boards = [board.status() for board in self.boards.values()]
            return {"ok": True, "op": "status", "boards": boards}
        except (RequestError, FirmwareImageError, FlashRefused) as exc:
            log.info("control_refused", error=str(exc))
            return _error(str(exc))
        except Exception as exc:
            log.exception("control_failed")
            return _error(f"internal error: {type(exc).__name__}: {exc}")

    def _board(self, board_id: str) -> ControlledBoard:
        board = self.boards.get(board_id)
        if board is None:
            known = ", ".join(self.boards) or "none"
            raise RequestError(f"unknown board {board_id!r}; known: {known}")
        return board

    async def _flash(self, request: _Flash) -> dict[str, object]:
        board = self._board(request.board)
        image = Path(request.image)
        if not image.is_absolute():
            raise RequestError(
                f"image path {request.image!r} is relative: send an absolute path (the "
                "simulator's working directory is not the caller's)"
            )
        model, build = await asyncio.to_thread(read_image, image)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await board.flash(model, build, write_s=self.write_s, reenumerate_s=self.reenumerate_s)
        seconds = loop.time() - started
        await self.on_change()
        log.info(
            "control_flashed",
            board=request.board,
            model=model,
            build=build,
            image=image,
            seconds=seconds,
        )
        return {
            "ok": True,
            "op": "flash",
            "board": request.board,
            "model": model,
            "build": build,
            "seconds": round(seconds, 3),
        }

    async def _power_cycle(self, request: _PowerCycle) -> dict[str, object]:
        board = self._board(request.board)
        off_s = self.off_s if request.off_s is None else request.off_s
        loop = asyncio.get_running_loop()
        started = loop.time()
        await board.power_cycle(off_s)
        seconds = loop.time() - started
        status = board.status()
        log.info(
            "control_power_cycled",
            board=request.board,
            off_s=off_s,
            boots=status["boots"],
            seconds=seconds,
        )
        return {
            "ok": True,
            "op": "power-cycle",
            "board": request.board,
            "model": status["model"],
            "build": status["build"],
            "off_s": off_s,
            "boots": status["boots"],
            "seconds": round(seconds, 3),
        }


def _parse(line: bytes) -> _Flash | _PowerCycle | _Status:
    try:
        return _REQUEST.validate_json(line)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # The discriminated union puts the op in front of every location: drop it.
            loc = [str(p) for p in err["loc"]]
            if loc and loc[0] in _OPS:
                loc = loc[1:]
            msg = err["msg"]
            if err["type"] == "union_tag_not_found":
                msg = f"no 'op' (one of {', '.join(_OPS)})"
            elif err["type"] == "union_tag_invalid":
                msg = f"unknown op {err.get('ctx', {}).get('tag')!r} (one of {', '.join(_OPS)})"
            problems.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
        raise RequestError(f"bad request: {'; '.join(problems)}") from None


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None if it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _error(message: str) -> dict[str, object]:
    return {"ok": False, "error": message}


async def _send(writer: asyncio.StreamWriter, reply: dict[str, object]) -> None:
    writer.write(json.dumps(reply).encode() + b"\n")
    await writer.drain()


def socket_path(preferred: Path) -> tuple[Path, Path | None]:
    """Where to listen: ``preferred`` if it fits in ``sun_path``, else ``control.sock`` in a
    new short temporary directory. Returns the path and that directory (``None`` if unused),
    which the caller removes when done."""
    preferred = preferred.absolute()
    if len(os.fsencode(preferred)) <= MAX_SOCKET_PATH_BYTES:
        return preferred, None
    # TMPDIR may itself be long (macOS, CI runners); /tmp almost never is.
    for base in (tempfile.gettempdir(), "/tmp"):
        directory = Path(tempfile.mkdtemp(prefix="tinyfarm-", dir=base))
        path = directory / "control.sock"
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES:
            log.info("control_path_fallback", preferred=preferred, path=path)
            return path, directory
        directory.rmdir()
    raise OSError(f"no socket path short enough for AF_UNIX instead of {preferred}")


def _literal(text: str) -> str:
    # Quoted for the shell, braces doubled for the agent's str.format of the template.
    return shlex.quote(text).replace("{", "{{").replace("}", "}}")


def flash_command(control: Path) -> str:
    """The agent's flash command template for boards of the simulator listening on
    ``control``, like ``st-flash --reset write {image} 0x08000000`` on a real board.

    ``{board}`` and ``{image}`` are ``str.format`` placeholders. Split the template with
    :func:`shlex.split` and fill each argument (no shell), or fill it with shell-quoted values
    and hand it to a shell: the paths in it are quoted and their braces doubled for both.
    """
    return (
        f"{_literal(sys.executable)} -m farm.simctl_cli flash"
        f" --control {_literal(str(control.absolute()))} --board {{board}} {{image}}"
    )


def power_cycle_command(control: Path) -> str:
    """The agent's power-cycle command template for boards of the simulator listening on
    ``control``, like ``uhubctl --action cycle`` on a real board; ``{board}`` is filled as in
    :func:`flash_command`."""
    return (
        f"{_literal(sys.executable)} -m farm.simctl_cli power-cycle"
        f" --control {_literal(str(control.absolute()))} --board {{board}}"
    )
