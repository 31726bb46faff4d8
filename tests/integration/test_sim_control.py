"""The simulator's control socket driven as an agent drives it: ``python -m farm.simctl_cli``
in a real subprocess against a :class:`SimFarm` running in this event loop, the boards'
real ptys opened by the agent's serial client, the socket spoken to directly for the
protocol's error paths."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.dut_client import DirectChannel, DutClient
from agent.errors import DeviceTimeout
from agent.interface_client import InterfaceClient
from agent.lpm01a_client import Lpm01aClient
from agent.serial_link import SerialLink
from farm.models import MODELS
from farm.protocol.interface import HOST_BAUD as INTERFACE_BAUD
from farm.protocol.lpm01a import HOST_BAUD as MONITOR_BAUD
from farm.sim.config import BoardConfig, SimConfig
from farm.sim.control import MAX_REQUEST_BYTES, flash_command, power_cycle_command
from farm.sim.faults import FaultSpec
from farm.sim.firmware import BUILDS, image_path
from farm.sim.server import SimBoard, SimFarm

SIMCTL = [sys.executable, "-m", "farm.simctl_cli"]
WRITE_S = 0.05
#: Long enough for a 5 ms poll of the symlink to see the port gone.
REENUMERATE_S = 0.3
#: The simulated interface board's reset (0.5 s) plus a margin.
INTERFACE_RESET_S = 0.6
COMMAND_TIMEOUT_S = 60.0

FarmFactory = Callable[..., Awaitable[SimFarm]]


def board(board_id: str, model: str, *, energy: bool = False, **extra: object) -> BoardConfig:
    """A board's config: performance firmware, or energy firmware when wired for energy."""
    return BoardConfig.model_validate(
        {
            "id": board_id,
            "model": model,
            "energy": energy,
            "firmware": "energy" if energy else "performance",
            **extra,
        }
    )


async def start_farm(out: Path, *boards: BoardConfig) -> SimFarm:
    """Start a farm with quick flashes; return once the performance DUTs have booted."""
    farm = SimFarm(SimConfig(seed=5, boards=list(boards)), out)
    farm.control.write_s = WRITE_S
    farm.control.reenumerate_s = REENUMERATE_S
    await farm.start()
    for b in farm.boards.values():
        if b.config.firmware == "performance":
            await asyncio.wait_for(b.dut.ready.wait(), 5)
    return farm


@pytest.fixture
async def sim_farm(tmp_path: Path) -> AsyncIterator[FarmFactory]:
    """Start farms on demand; all are stopped at the end of the test."""
    farms: list[SimFarm] = []

    async def start(*boards: BoardConfig) -> SimFarm:
        farm = await start_farm(tmp_path / f"sim{len(farms)}", *boards)
        farms.append(farm)
        return farm

    yield start
    for farm in farms:
        await farm.stop()


async def simctl(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run ``python -m farm.simctl_cli ARGS``; return its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *SIMCTL,
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(COMMAND_TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def watching(path: Path) -> AsyncIterator[list[bool]]:
    """Poll whether ``path`` exists every 5 ms while the block runs; yield the samples."""
    seen: list[bool] = []

    async def poll() -> None:
        while True:
            seen.append(await asyncio.to_thread(os.path.lexists, path))
            await asyncio.sleep(0.005)

    task = asyncio.create_task(poll())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def exists(path: Path) -> bool:
    """Whether ``path`` (a symlink, a socket, a file) is there."""
    return await asyncio.to_thread(os.path.lexists, path)


def descriptor(farm: SimFarm, board_id: str) -> dict:
    document = json.loads(farm.boards_json.read_text())
    return next(b for b in document["boards"] if b["id"] == board_id)


async def direct_client(entry: dict, model: str) -> tuple[SerialLink, DutClient]:
    """A fresh link and client on a board's DUT port, as boards.json describes it."""
    link = await SerialLink.open(entry["dut"]["path"], int(entry["dut"]["baud"]))
    # A short busy limit keeps the hang tests quick.
    return link, DutClient(DirectChannel(link, busy_limit_s=1.0), MODELS[model])


async def answers_as_performance_vww01(farm: SimFarm, board_id: str) -> None:
    """boards.json lists the board as a vww01 performance build at 115200 baud on its own
    port, and the DUT there says so."""
    entry = descriptor(farm, board_id)
    assert (entry["model"], entry["firmware"], entry["dut"]["baud"]) == (
        "vww01",
        "performance",
        115200,
    )
    link, client = await direct_client(entry, "vww01")
    try:
        assert await client.profile() == ("ULPMark for tinyML Firmware V0.0.1", "vww01")
    finally:
        await link.close()


async def flash(farm: SimFarm, board_id: str, model: str, build: str) -> tuple[int, str, str]:
    image = image_path(farm.out, model, build)
    return await simctl(
        "flash", "--control", str(farm.control.path), "--board", board_id, str(image)
    )


# -- flash -------------------------------------------------------------------------------------


async def test_flash_reenumerates_the_port_and_boots_the_new_model(
    sim_farm: FarmFactory,
) -> None:
    farm = await sim_farm(board("b1", "kws01"))
    b = farm.boards["b1"]
    document = json.loads(farm.boards_json.read_text())
    assert document["control"] == str(farm.control.path) == str(farm.out / "control.sock")
    for model in MODELS:
        for build in BUILDS:
            assert image_path(farm.out, model, build).is_file()

    old_link, old_client = await direct_client(descriptor(farm, "b1"), "kws01")
    try:
        assert (await old_client.profile())[1] == "kws01"
        async with watching(b.dut_port.path) as seen:
            rc, out, err = await flash(farm, "b1", "vww01", "performance")
        assert rc == 0, err
        assert out.strip().startswith("flashed b1: vww01 performance in ")
        assert False in seen, "the port never disappeared"
        assert seen[0] and await exists(b.dut_port.path), "the port did not come back"
        assert not old_link.is_open  # the host's open port broke, as on a USB re-enumeration
    finally:
        await old_link.close()

    await answers_as_performance_vww01(farm, "b1")
    assert b.dut.boots == 2

    # Another model at another baud: boards.json says which, and the ground truth still holds.
    rc, out, err = await flash(farm, "b1", "ad01", "performance")
    assert rc == 0, err
    entry = descriptor(farm, "b1")
    assert (entry["model"], entry["dut"]["baud"]) == ("ad01", 921600)
    link, client = await direct_client(entry, "ad01")
    try:
        assert (await client.profile())[1] == "ad01"
        await client.load(bytes(MODELS["ad01"].input_bytes))
        result = await client.infer(3, 1)
        assert result.elapsed_us == b.dut.records[-1].window_us > 0
    finally:
        await link.close()
    assert b.dut.boots == 3


async def test_flash_failures_exit_non_zero_and_say_why(
    sim_farm: FarmFactory, tmp_path: Path
) -> None:
    farm = await sim_farm(board("b1", "kws01"))
    control = str(farm.control.path)
    before = farm.boards_json.read_text()

    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello\n")
    rc, out, err = await simctl("flash", "--control", control, "--board", "b1", str(not_image))
    assert rc != 0 and out == ""
    assert err.startswith("error: ") and "not a simulated firmware image" in err
    assert str(not_image) in err

    missing = tmp_path / "missing.bin"
    rc, _, err = await simctl("flash", "--control", control, "--board", "b1", str(missing))
    assert rc != 0 and f"{missing}: no such firmware image" in err

    rc, _, err = await flash(farm, "nope", "kws01", "performance")
    assert rc != 0 and "unknown board 'nope'; known: b1" in err

    rc, _, err = await flash(farm, "b1", "kws01", "energy")
    assert rc != 0 and "has no interface board" in err and "energy build" in err

    # Nothing happened to the board.
    assert farm.boards["b1"].dut.boots == 1
    assert farm.boards_json.read_text() == before

    # A relative image path is relative to the caller, not to the simulator.
    rc, out, err = await simctl(
        "flash",
        "--control",
        control,
        "--board",
        "b1",
        "ic01-performance.bin",
        cwd=farm.out / "firmware",
    )
    assert rc == 0, err
    assert descriptor(farm, "b1")["model"] == "ic01"


async def test_cli_says_when_the_simulator_is_not_running(tmp_path: Path) -> None:
    rc, _, err = await simctl("status", "--control", str(tmp_path / "control.sock"))
    assert rc != 0 and "error: no control socket at" in err
    assert "the simulator is not running" in err

    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # a socket file nobody listens on, as after a crash
    rc, _, err = await simctl("power-cycle", "--control", str(stale), "--board", "b1")
    assert rc != 0 and "nothing listens" in err and "not running" in err


async def test_flash_ends_a_hang(sim_farm: FarmFactory) -> None:
    farm = await sim_farm(board("b1", "kws01"))
    link, client = await direct_client(descriptor(farm, "b1"), "kws01")
    try:
        farm.boards["b1"].dut.faults.arm(FaultSpec(kind="hang", command="name"))
        with pytest.raises(DeviceTimeout):
            await client.name()
        rc, _, err = await flash(farm, "b1", "kws01", "performance")
        assert rc == 0, err
    finally:
        await link.close()
    link, client = await direct_client(descriptor(farm, "b1"), "kws01")
    try:
        assert await client.name() == "unspecified"
    finally:
        await link.close()


# -- power cycle -------------------------------------------------------------------------------


async def test_power_cycle_ends_a_hang(sim_farm: FarmFactory) -> None:
    farm = await sim_farm(board("b1", "kws01"), board("b2", "ic01"))
    b = farm.boards["b1"]
    control = str(farm.control.path)
    link, client = await direct_client(descriptor(farm, "b1"), "kws01")
    try:
        b.dut.faults.arm(FaultSpec(kind="hang", command="name"))
        with pytest.raises(DeviceTimeout):
            await client.name()
        assert b.dut.faults.injected == [("hang", "name")]
        async with watching(b.dut_port.path) as seen:
            rc, out, err = await simctl(
                "power-cycle", "--control", control, "--board", "b1", "--off-s", "0.2"
            )
        assert rc == 0, err
        assert out.startswith("power-cycled b1: off 0.20 s, kws01 performance booted (boot 2)")
        assert False in seen and await exists(b.dut_port.path)
        assert not link.is_open
    finally:
        await link.close()

    link, client = await direct_client(descriptor(farm, "b1"), "kws01")
    try:
        assert await client.name() == "unspecified"
        assert (await client.profile())[1] == "kws01"
    finally:
        await link.close()

    rc, out, err = await simctl("status", "--control", control)
    assert rc == 0, err
    assert out.splitlines() == [
        "b1 kws01 performance boots=2 energy=no powered=yes",
        "b2 ic01 performance boots=1 energy=no powered=yes",
    ]


# -- an energy-wired board: the build decides which UART the DUT talks on ------------------------


async def test_energy_board_flashes_between_builds(sim_farm: FarmFactory) -> None:
    farm = await sim_farm(board("e1", "kws01", energy=True))
    b = farm.boards["e1"]
    assert b.interface_port is not None and b.monitor_port is not None
    monitor_link = await SerialLink.open(str(b.monitor_port.path), MONITOR_BAUD)
    try:
        lpm = Lpm01aClient(monitor_link)
        await lpm.setup(1800)  # the runner's set-up switches the target off
        assert not b.rail.on
        rc, _, err = await flash(farm, "e1", "vww01", "performance")
        assert rc != 0 and "target not powered" in err
        await lpm.power(True, voltage_mv=1800)

        # Energy -> performance: the DUT now talks on its own USB port, at 115200.
        rc, _, err = await flash(farm, "e1", "vww01", "performance")
        assert rc == 0, err
        await answers_as_performance_vww01(farm, "e1")

        # Performance -> energy: back behind the interface board, at 9600.
        rc, _, err = await flash(farm, "e1", "kws01", "energy")
        assert rc == 0, err
        entry = descriptor(farm, "e1")
        assert (entry["model"], entry["firmware"], entry["dut"]["baud"]) == (
            "kws01",
            "energy",
            9600,
        )
        interface_link = await SerialLink.open(entry["interface"]["path"], INTERFACE_BAUD)
        try:
            interface = InterfaceClient(interface_link, dut_baud=9600, reset_s=INTERFACE_RESET_S)
            await interface.resync()
            dut = interface.dut(MODELS["kws01"])
            assert (await dut.profile())[1] == "kws01"
        finally:
            await interface_link.close()
        assert b.dut.boots == 4  # at start, the monitor's power-on, two flashes
    finally:
        await monitor_link.close()


# -- the protocol ------------------------------------------------------------------------------


async def exchange(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, line: bytes) -> dict:
    writer.write(line)
    await writer.drain()
    async with asyncio.timeout(10):
        return json.loads(await reader.readline())


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "bad request: Invalid JSON"),
        (b"\xff\xfe\n", "bad request: Invalid JSON"),
        (b"[1, 2]\n", "bad request: Input should be an object"),
        (b"{}\n", "bad request: no 'op'"),
        (b'{"op": "reboot"}\n', "unknown op 'reboot'"),
        (b'{"op": "flash", "board": "b1"}\n', "image: Field required"),
        (b'{"op": "flash", "board": 1, "image": "/x"}\n', "board: Input should be a valid string"),
        (b'{"op": "flash", "board": "b1", "image": "x.bin"}\n', "is relative"),
        (b'{"op": "power-cycle", "board": "b1", "off_s": -1}\n', "off_s: Input should be greater"),
        (b'{"op": "power-cycle", "board": "b1", "off_s": 1e9}\n', "off_s: Input should be less"),
        (b'{"op": "power-cycle", "board": "zz"}\n', "unknown board 'zz'"),
        (b'{"op": "status", "extra": 1}\n', "extra: Extra inputs are not permitted"),
    ],
)
async def test_malformed_requests_get_an_error_reply(
    sim_farm: FarmFactory, line: bytes, error: str
) -> None:
    farm = await sim_farm(board("b1", "kws01"))
    reader, writer = await asyncio.open_unix_connection(str(farm.control.path))
    try:
        reply = await exchange(writer, reader, line)
        assert reply["ok"] is False and error in reply["error"], reply
        # The same connection keeps serving.
        reply = await exchange(writer, reader, b'{"op": "status"}\n')
        assert reply["ok"] is True
        assert reply["boards"] == [
            {
                "id": "b1",
                "model": "kws01",
                "build": "performance",
                "boots": 1,
                "energy": False,
                "powered": True,
            }
        ]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_oversized_and_abandoned_requests_do_not_stop_the_server(
    sim_farm: FarmFactory,
) -> None:
    farm = await sim_farm(board("b1", "kws01"))
    path = str(farm.control.path)

    reader, writer = await asyncio.open_unix_connection(path)
    reply = await exchange(writer, reader, b"x" * (MAX_REQUEST_BYTES + 100) + b"\n")
    assert reply == {"ok": False, "error": f"request over {MAX_REQUEST_BYTES} bytes"}
    async with asyncio.timeout(10):
        assert await reader.read() == b""  # the server closed that connection
    writer.close()
    await writer.wait_closed()

    # A client that leaves mid-line, and one that leaves before its power cycle's reply.
    _, writer = await asyncio.open_unix_connection(path)
    writer.write(b'{"op": "sta')
    writer.close()
    await writer.wait_closed()
    _, writer = await asyncio.open_unix_connection(path)
    writer.write(b'{"op": "power-cycle", "board": "b1", "off_s": 0.1}\n')
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    # Blank lines are not requests; several requests in one write get one reply each.
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(b'\n{"op": "status"}\n{"op": "power-cycle", "board": "b1", "off_s": 0}\n')
        await writer.drain()
        async with asyncio.timeout(10):
            first = json.loads(await reader.readline())
            second = json.loads(await reader.readline())
        assert first["op"] == "status" and first["ok"]
        assert second["op"] == "power-cycle" and second["ok"] and second["off_s"] == 0
        # Both power cycles ran, one after the other.
        assert second["boots"] == 3
    finally:
        writer.close()
        await writer.wait_closed()


# -- lifecycle ---------------------------------------------------------------------------------


async def test_stop_cancels_a_flash_in_progress_and_removes_the_socket(tmp_path: Path) -> None:
    farm = await start_farm(tmp_path / "sim", board("b1", "kws01"))
    path = farm.control.path
    assert path is not None
    try:
        farm.control.write_s = 30.0  # a flash that would outlive the test
        reader, writer = await asyncio.open_unix_connection(str(path))
        image = image_path(farm.out, "vww01", "performance")
        writer.write(json.dumps({"op": "flash", "board": "b1", "image": str(image)}).encode())
        writer.write(b"\n")
        await writer.drain()
        b = farm.boards["b1"]
        async with asyncio.timeout(30):
            while b.dut.ready.is_set():  # noqa: ASYNC110 -- the core halts for the write
                await asyncio.sleep(0.01)
    finally:
        async with asyncio.timeout(30):
            await farm.stop()
    assert not await exists(path)
    assert not await exists(farm.boards_json)
    async with asyncio.timeout(30):
        assert await reader.read() == b""  # cancelled: no reply, connection closed
    writer.close()
    await writer.wait_closed()
    assert [p for p in farm.out.rglob("*") if p.is_symlink()] == []


async def test_too_long_a_directory_gets_a_short_socket_path(tmp_path: Path) -> None:
    out = tmp_path / ("d" * 100) / "sim"
    assert len(os.fsencode(out / "control.sock")) > 107
    farm = await start_farm(out, board("b1", "kws01"))
    try:
        path = farm.control.path
        assert path is not None and len(os.fsencode(path)) <= 107
        assert json.loads(farm.boards_json.read_text())["control"] == str(path)
        rc, out_text, err = await simctl("status", "--control", str(path))
        assert rc == 0, err
        assert out_text.startswith("b1 kws01 performance")
    finally:
        await farm.stop()
    assert not await exists(path)
    assert not await exists(path.parent)


async def test_command_templates_run_through_a_shell_or_split(tmp_path: Path) -> None:
    # A space and braces in the path: the templates must survive quoting and str.format.
    farm = await start_farm(tmp_path / "my sim {x}", board("b1", "kws01"))
    try:
        path = farm.control.path
        assert path is not None
        flash_template, cycle_template = flash_command(path), power_cycle_command(path)
        for template in (flash_template, cycle_template):
            assert template.startswith(shlex.quote(sys.executable) + " -m farm.simctl_cli ")

        # Filled, then run by a shell (values shell-quoted by whoever fills them).
        image = image_path(farm.out, "vww01", "performance")
        command = flash_template.format(board="b1", image=shlex.quote(str(image)))
        proc = await asyncio.create_subprocess_shell(command, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()

        # Split first, each argument filled afterwards, no shell (how an agent runs it).
        argv = [arg.format_map({"board": "b1"}) for arg in shlex.split(cycle_template)]
        assert argv[argv.index("--control") + 1] == str(path)
        proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()

        b: SimBoard = farm.boards["b1"]
        assert (b.settings.model, b.dut.boots) == ("vww01", 3)
    finally:
        await farm.stop()
