"""The interface-board client against the simulated board and DUT over a real pty."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.dut_client import DutClient
from agent.errors import DeviceCommandError, DeviceReset, DeviceTimeout, GarbledReply
from agent.interface_client import InterfaceClient, InterfaceWedged
from agent.serial_link import SerialLink
from farm.models import MODELS
from farm.protocol.errors import LocalProtocolError
from farm.protocol.interface import BaudSet, PassthroughAck, Ready
from farm.sim.dut import SimDut
from farm.sim.faults import FaultPlan, FaultSpec
from farm.sim.interface import SimInterface
from farm.sim.latency import LatencyModel
from farm.sim.power import GpioLine, PowerModel, PowerRail
from farm.sim.pty_port import PtyPort
from farm.sim.wire_pair import wire_pair
from farm.synthetic import encode_input, simulated_output
from tests.integration.deadlines import assert_on_time

#: The simulated board's reset after ``setbaud`` (SimInterface default 0.5 s) plus a margin.
RESET_S = 0.6
#: Bound on anything the simulators do in the background (boot, reset) in these tests.
SETTLE_S = 5.0


@dataclass
class Rig:
    """A DUT wired to a simulated interface board whose host port is a real pty."""

    port: PtyPort
    interface: SimInterface
    dut: SimDut
    rail: PowerRail
    link: SerialLink
    client: InterfaceClient

    def dut_client(self) -> DutClient:
        return self.client.dut(self.dut.model)

    async def power_cycle_dut(self) -> None:
        """Cut the DUT's rail and restore it; return once it has booted (banner out)."""
        loop = asyncio.get_running_loop()
        boots = self.dut.boots
        self.rail.switch(loop.time(), False)
        self.rail.switch(loop.time(), True)
        await settle(lambda: self.dut.boots > boots and self.dut.ready.is_set())


RigFactory = Callable[..., Awaitable[Rig]]


async def settle(predicate: Callable[[], bool]) -> None:
    """Wait (bounded) for background simulator state to reach ``predicate``."""
    async with asyncio.timeout(SETTLE_S):
        # Polled: the simulators expose counters and queues, not an event per change.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[RigFactory]:
    started: list[Rig] = []
    stops: list[Callable[[], Awaitable[None]]] = []

    async def make(
        build: str = "energy",
        model: str = "kws01",
        *,
        dut_baud: int = 9600,
        stored_baud: int = 9600,
        sd_card: bool = True,
        interface_faults: list[FaultSpec] | None = None,
    ) -> Rig:
        n = len(started)
        port = PtyPort(tmp_path / f"interface{n}", 115200)
        await port.start()
        stops.append(port.close)
        board_end, dut_end = wire_pair(dut_baud, names=("interface", "dut"))
        rail, gpio, power = PowerRail(), GpioLine(), PowerModel()
        dut = SimDut(
            board=f"b{n}",
            model=MODELS[model],
            build=build,  # type: ignore[arg-type]
            uart=dut_end,
            latency=LatencyModel(0.002, spread=0.1, seed=5),
            power=power,
            gpio=gpio,
            rail=rail,
        )
        interface = SimInterface(
            board=f"b{n}",
            host=port,
            dut=board_end,
            faults=FaultPlan(interface_faults or [], seed=3),
            stored_baud=stored_baud,
            sd_card=sd_card,
        )
        # The DUT runs before the board boots, so its banner is not in the board's queue.
        await dut.start()
        stops.append(dut.stop)
        await asyncio.wait_for(dut.ready.wait(), SETTLE_S)
        await interface.start()
        stops.append(interface.stop)
        await asyncio.wait_for(interface.ready.wait(), SETTLE_S)
        link = await SerialLink.open(str(port.path), 115200)
        stops.append(link.close)
        client = InterfaceClient(link, dut_baud=stored_baud, reset_s=RESET_S)
        made = Rig(port, interface, dut, rail, link, client)
        started.append(made)
        return made

    yield make
    for stop in reversed(stops):
        await stop()


async def test_example_exchange_with_a_performance_build(rig: RigFactory) -> None:
    """The example of docs/protocols.md#interface-passthrough, byte for byte, including the
    full-size kws01 load."""
    r = await rig("performance", "kws01")
    client = r.client
    assert await client.name() == "tinyML Enhanced Interface Board"

    reply = await client.passthrough("db load 490", reply_bytes=80)
    assert reply.events[0] == PassthroughAck(b"m-dut-passthrough(db load 490)", "db load 490")
    assert isinstance(reply.events[1], Ready) and reply.events[1].line == b"m-ready"
    assert [e.line for e in reply.events[2:]] == [
        b"[dut]: m-[Expecting 490 bytes]",
        b"[dut]: m-ready",
    ]
    assert reply.dut_lines == (b"m-[Expecting 490 bytes]", b"m-ready")

    spec = MODELS["kws01"]
    data = encode_input(spec, label=2, u=0.5, file_bytes=spec.input_bytes, seed=4)
    dut = r.dut_client()
    started = time.monotonic()
    await dut.load(data)  # 19 chunks of 26 bytes (the last 22), m-load-done checked
    assert r.link.bytes_out > 2 * len(data)
    # 19 commands of up to 59 bytes cross the DUT link at 9600 baud: the load takes its time.
    assert time.monotonic() - started >= 19 * 10 * 56 / 9600 * 0.9

    reply = await client.passthrough("infer 1", reply_bytes=300, compute_s=0.2)
    kinds = [line.split(b"-")[1] if line.startswith(b"m-") else line for line in reply.dut_lines]
    assert kinds == [b"warmup", b"warmup", b"infer", b"lap", b"lap", b"infer", b"results", b"ready"]
    assert reply.dut_lines[0] == b"m-warmup-start-10"  # infer 1 without W: 10 warmups
    assert reply.dut_lines[2] == b"m-infer-start-1"
    result = await dut.infer(1, 0)
    assert result.elapsed_us == r.dut.records[-1].window_us
    assert result.results == pytest.approx(simulated_output(spec, data, r.dut.quality), abs=1e-3)


async def test_board_commands(rig: RigFactory) -> None:
    r = await rig()
    assert await r.client.checkbaud() == 9600
    # No table entry matches: m-ready only.
    reply = await r.client.command("help")
    assert [e.line for e in reply.events] == [b"m-ready"]


async def test_silent_non_match_times_out_within_the_model(rig: RigFactory) -> None:
    r = await rig()
    client = r.client
    # The client refuses what the board ignores without a word...
    with pytest.raises(LocalProtocolError, match="no reply at all"):
        await client.command("names")
    # ...and the board indeed says nothing: not within the deadline a command would get.
    deadline = client.board_timeout("names")
    r.link.write(b"names%")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(deadline):
            await r.link.read()
    assert time.monotonic() - started <= deadline + 0.2
    assert await client.name() == "tinyML Enhanced Interface Board"


async def test_hung_board_times_out_within_the_computed_deadline(rig: RigFactory) -> None:
    r = await rig(interface_faults=[FaultSpec(kind="hang", device="interface", command="name")])
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match="no valid reply") as info:
        await r.client.name()
    elapsed = time.monotonic() - started
    assert info.value.timeout == pytest.approx(r.client.board_timeout("name"))
    assert elapsed >= info.value.timeout - 0.05  # not before its budget (load only delays)
    assert_on_time(elapsed, info.value.timeout)
    assert r.interface.hung
    r.interface.reset()  # the reset button
    await settle(lambda: r.interface.ready.is_set())
    assert await r.client.name() == "tinyML Enhanced Interface Board"


async def test_setbaud_resets_the_board_and_flushes_its_queues(rig: RigFactory) -> None:
    r = await rig()
    await r.power_cycle_dut()
    await settle(lambda: r.interface.dut_queue.endswith(b"m-ready\r\n"))
    assert r.interface.dut_queue.startswith(b"m-timestamp-mode-energy\r\n")

    reply = await r.client.command("setbaud 9600")
    assert isinstance(reply.events[0], BaudSet) and reply.events[0].line == b"set baud to: 9600"
    # The board is deaf while it resets: a command sent now is lost.
    with pytest.raises(DeviceTimeout):
        await r.client.name()
    await settle(lambda: r.interface.ready.is_set())
    assert r.interface.resets == 1
    assert r.interface.dut_queue == b""
    assert await r.client.name() == "tinyML Enhanced Interface Board"
    assert await r.dut_client().name() == "unspecified"


async def test_setbaud_persists_across_resets(rig: RigFactory) -> None:
    r = await rig("performance", dut_baud=115200, stored_baud=9600)
    await r.client.setbaud(115200)
    assert r.client.dut_baud == 115200
    assert await r.client.checkbaud() == 115200
    assert await r.dut_client().name() == "unspecified"
    r.interface.reset()
    await settle(lambda: r.interface.ready.is_set())
    assert await r.client.checkbaud() == 115200


async def test_dut_queue_keeps_100_bytes(rig: RigFactory) -> None:
    r = await rig()
    for _ in range(3):  # three 47-byte banners nobody reads
        await r.power_cycle_dut()
    await settle(lambda: len(r.interface.dut_queue) + r.interface.dropped_dut_bytes >= 141)
    assert len(r.interface.dut_queue) == 100
    assert r.interface.dropped_dut_bytes == 41


async def test_stale_banner_desync_and_resync(rig: RigFactory) -> None:
    """After a DUT power cycle its banner waits in the board's queue: every reply comes one
    command late until a resync resets the board."""
    r = await rig()
    dut = r.dut_client()
    assert await dut.name() == "unspecified"
    await r.power_cycle_dut()
    with pytest.raises(DeviceReset):
        await dut.name()  # the reply is the stale banner
    with pytest.raises(GarbledReply, match="Profile"):
        await dut.profile()  # the reply is the name, one late
    await dut.resync()
    assert r.interface.resets == 1
    assert await dut.profile() == ("ULPMark for tinyML Firmware V0.0.1", "kws01")
    assert await dut.name() == "unspecified"


async def test_bare_lf_wedge_needs_a_dut_power_cycle(rig: RigFactory) -> None:
    """A DUT line ending in a bare LF merges with its m-ready: the host has its reply, the
    board still waits for an exact m-ready and reads nothing else."""
    r = await rig()
    dut = r.dut_client()
    with pytest.raises(DeviceCommandError, match="exceeds maximum of 490"):
        await dut.command("db load 999")
    assert r.client.host.wedged
    with pytest.raises(InterfaceWedged):
        await dut.name()
    await r.power_cycle_dut()  # the banner's m-ready frees the board
    assert await dut.name() == "unspecified"
    assert r.interface.resets == 0


async def test_no_sd_card_hangs_the_passthrough(rig: RigFactory) -> None:
    r = await rig(sd_card=False)
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match="stopped before m-ready") as info:
        await r.dut_client().name()
    assert_on_time(time.monotonic() - started, info.value.timeout)
    assert info.value.received > 0  # the ack came, the DUT's reply never did


async def test_dut_link_at_the_wrong_baud_carries_only_noise(rig: RigFactory) -> None:
    """The board's DUT side at 115200 against a DUT at 9600: the DUT gets framing noise,
    never a whole command, so nothing executes and the host times out instead of reading
    a reply that a real UART could never have passed."""
    r = await rig("energy", "kws01", dut_baud=9600, stored_baud=115200)
    executed = r.dut.firmware.last_command
    with pytest.raises(DeviceTimeout):
        await r.client.passthrough("name", reply_bytes=40)
    assert r.dut.firmware.last_command == executed
