"""Simulated serial ports against real pseudo-terminals and a real host stack.

The host side is pyserial / pyserial-asyncio-fast opening the port's symlink, exactly as an
agent would open a board; nothing is mocked. Timing assertions derive from the wire model
(10 bit times per byte) with tolerances sized for a loaded CI machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial
import serial_asyncio_fast

from farm.sim.pacing import PortClosedError
from farm.sim.pty_port import PtyPort
from farm.sim.transcript import Transcript, read_transcript
from farm.sim.wire_pair import wire_pair
from farm.wire import char_time, wire_time

# Host-side scheduling and USB-less pty latency: a byte may be seen this much after its due time.
LATE = 0.03


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[PtyPort]:
    p = PtyPort(tmp_path / "ttyDUT", 115200)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def open_host(p: PtyPort, baud: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await serial_asyncio_fast.open_serial_connection(url=str(p.path), baudrate=baud)


async def read_exactly_timed(
    reader: asyncio.StreamReader, n: int, limit_s: float
) -> tuple[bytes, list[tuple[float, int]]]:
    """Read n bytes; return them and (loop time, cumulative count) after every chunk."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    marks: list[tuple[float, int]] = []
    async with asyncio.timeout(limit_s):
        while len(buf) < n:
            chunk = await reader.read(n - len(buf))
            assert chunk, "host saw EOF"
            buf += chunk
            marks.append((loop.time(), len(buf)))
    return bytes(buf), marks


async def device_read_timed(
    p: PtyPort, n: int, limit_s: float
) -> tuple[bytes, list[tuple[float, int]]]:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    marks: list[tuple[float, int]] = []
    async with asyncio.timeout(limit_s):
        while len(buf) < n:
            buf += await p.read()
            marks.append((loop.time(), len(buf)))
    return bytes(buf), marks


def assert_never_early(marks: list[tuple[float, int]], t0: float, baud: int) -> None:
    ct = char_time(baud)
    for t, count in marks:
        # count bytes seen by t means byte count-1 was due (t0 + count*ct) no later than t.
        assert count <= (t - t0) / ct + 1e-6, f"{count} bytes by {t - t0:.6f}s: early"


@pytest.mark.parametrize("baud", [115200, 921600])
async def test_device_output_is_paced_and_streamed(port: PtyPort, baud: int) -> None:
    port.baud = baud
    reader, writer = await open_host(port, baud)
    try:
        data = bytes(i % 251 for i in range(27_648))
        wire = wire_time(len(data), baud)
        loop = asyncio.get_running_loop()
        cpu0 = os.times()
        t0 = loop.time()
        write = asyncio.create_task(port.write(data))
        got, marks = await read_exactly_timed(reader, len(data), wire * 3 + 2)
        await write
        t_write_done = loop.time()
        cpu = (os.times().user - cpu0.user) + (os.times().system - cpu0.system)
        assert got == data
        elapsed = marks[-1][0] - t0
        print(
            f"\nbaud={baud} wire={wire:.4f}s host_last={elapsed:.4f}s "
            f"ratio={elapsed / wire:.4f} first={marks[0][0] - t0:.4f}s "
            f"host_reads={len(marks)} cpu={cpu:.3f}s"
        )
        assert elapsed >= wire
        assert elapsed < 1.15 * wire
        assert t_write_done - t0 >= wire
        # Streamed: the first bytes arrive within a few ms, not at the end of the reply.
        assert marks[0][0] - t0 < LATE
        assert_never_early(marks, t0, baud)
        # Delivered in bursts, not one wake-up per byte.
        assert len(marks) < len(data) / 8
    finally:
        writer.close()


async def test_host_input_is_stamped_at_wire_time(port: PtyPort) -> None:
    port.baud = 9600
    _reader, writer = await open_host(port, 9600)
    try:
        data = bytes(range(200)) * 5
        wire = wire_time(len(data), 9600)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        writer.write(data)  # the pty takes all 1,000 bytes at once
        got, marks = await device_read_timed(port, len(data), 5)
        assert got == data
        ct = char_time(9600)
        last = marks[-1][0] - t0
        print(
            f"\nrx 9600: wire={wire:.4f}s first_read={marks[0][0] - t0:.4f}s "
            f"last_read={last:.4f}s reads={len(marks)}"
        )
        assert marks[0][0] - t0 < LATE
        assert last >= wire
        assert last < wire + 0.1
        assert_never_early(marks, t0, 9600)
        for t, count in marks:
            # Not held back: everything due LATE ago has been delivered.
            assert count >= (t - t0 - LATE) / ct - 1
        assert len(marks) > 100  # spread over the second, coalesced into ~1 ms reads
    finally:
        writer.close()


async def test_drop_received_between_keeps_first_bytes(port: PtyPort) -> None:
    port.baud = 9600
    _reader, writer = await open_host(port, 9600)
    try:
        data = bytes(range(100))
        writer.write(data)
        await asyncio.sleep(0.02)  # the pty has handed everything over, little is due yet
        ct = char_time(9600)
        base = port.rx_free_at - len(data) * ct  # byte i arrives at base + (i + 1) * ct
        dropped = port.drop_received_between(base + 10.5 * ct, base + 20.5 * ct, keep=3)
        assert dropped == 7  # bytes 10..19 are in the window: keep 10, 11, 12
        got, _ = await device_read_timed(port, 93, 2)
        assert got == data[:13] + data[20:]

        # A whole burst while the device was busy: keep 2 of 100.
        loop = asyncio.get_running_loop()
        t_busy = loop.time()
        writer.write(data)
        await asyncio.sleep(wire_time(100, 9600) + 0.02)
        assert port.drop_received_between(t_busy, loop.time(), keep=2) == 98
        assert await asyncio.wait_for(port.read(), 1) == data[:2]
    finally:
        writer.close()


async def test_clear_input_drops_pending(port: PtyPort) -> None:
    _reader, writer = await open_host(port, 115200)
    try:
        writer.write(b"x" * 50)
        await asyncio.sleep(0.05)
        assert port.clear_input() == 50
        assert port.clear_input() == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(port.read(), 0.1)
        writer.write(b"after\n")
        assert (await device_read_timed(port, 6, 1))[0] == b"after\n"
    finally:
        writer.close()


async def test_raw_mode_all_bytes_both_ways_no_echo(port: PtyPort) -> None:
    port.baud = 921600
    reader, writer = await open_host(port, 921600)
    try:
        every = bytes(range(256))
        special = b"\r\n\x03\x1a\x7f\x00\x11\x13\x04\x1c\r\r\n\n"
        writer.write(every + special)
        got, _ = await device_read_timed(port, 256 + len(special), 2)
        assert got == every + special

        await port.write(every + special)
        back, _ = await read_exactly_timed(reader, 256 + len(special), 2)
        assert back == every + special
        # No echo of what the host sent, no translation artefacts: nothing else to read.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.1)
    finally:
        writer.close()


@pytest.mark.parametrize("baud", [9600, 921600, 3686400])
async def test_host_baud_seen_by_device(port: PtyPort, baud: int) -> None:
    assert port.host_baud() == 115200  # the device's own rate until the host sets one
    s = await asyncio.to_thread(serial.Serial, str(port.path), baud)
    try:
        assert port.host_baud() == baud
    finally:
        s.close()


async def test_host_close_and_reopen(port: PtyPort, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="farm.sim.pty_port")
    for round_ in range(3):
        s = await asyncio.to_thread(serial.Serial, str(port.path), 115200, timeout=1)
        try:
            await port.write(b"hello %d\n" % round_)
            assert await asyncio.to_thread(s.read, 8) == b"hello %d\n" % round_
            await asyncio.to_thread(s.write, b"cmd\n")
            assert (await device_read_timed(port, 4, 1))[0] == b"cmd\n"
        finally:
            s.close()
        await asyncio.sleep(0.02)  # let the loop notice any hangup on the master
        assert port.connected
    assert not caplog.records  # no EIO on the master


async def test_disconnect_breaks_host_then_reopen_by_path(port: PtyPort) -> None:
    s = await asyncio.to_thread(serial.Serial, str(port.path), 9600, timeout=1)
    reader, writer = await open_host(port, 9600)
    writer.write(b"y" * 200)  # still on the wire when the cable goes: lost
    await asyncio.sleep(0.02)

    unplug = asyncio.create_task(port.disconnect(0.3))
    await asyncio.sleep(0.02)
    assert not port.connected
    assert not await asyncio.to_thread(os.path.lexists, port.path)
    with pytest.raises(serial.SerialException):
        await asyncio.to_thread(s.read, 1)
    with pytest.raises(serial.SerialException):
        await asyncio.to_thread(s.write, b"x")
    with pytest.raises(serial.SerialException):
        await asyncio.wait_for(reader.read(1), 1)
    writer.write(b"z")  # does not raise ...
    with pytest.raises(serial.SerialException):
        await writer.drain()  # ... the failure surfaces here
    with pytest.raises(serial.SerialException):
        await asyncio.to_thread(serial.Serial, str(port.path), 9600)
    s.close()
    writer.close()
    # A device printing into the unplugged cable is paced and does not fail.
    await port.write(b"into the void\n")

    await asyncio.wait_for(port.wait_connected(), 2)
    await unplug
    assert port.connected
    assert await asyncio.to_thread(os.path.realpath, port.path) == port.device_name
    s = await asyncio.to_thread(serial.Serial, str(port.path), 9600, timeout=1)
    try:
        await asyncio.to_thread(s.write, b"again\n")
        # Exactly the new bytes: the 'y's pending at the unplug are gone.
        assert (await device_read_timed(port, 6, 1))[0] == b"again\n"
        await port.write(b"ok\n")
        assert await asyncio.to_thread(s.read, 3) == b"ok\n"
    finally:
        s.close()


async def test_cancelled_disconnect_plugs_back_in(port: PtyPort) -> None:
    unplug = asyncio.create_task(port.disconnect(60))
    await asyncio.sleep(0.02)
    assert not port.connected
    unplug.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unplug
    assert port.connected
    s = await asyncio.to_thread(serial.Serial, str(port.path), 115200, timeout=1)
    try:
        await port.write(b"up\n")
        assert await asyncio.to_thread(s.read, 3) == b"up\n"
    finally:
        s.close()


async def test_full_pty_buffer_waits_without_spinning(port: PtyPort) -> None:
    port.baud = 3686400
    s = await asyncio.to_thread(serial.Serial, str(port.path), 3686400, timeout=0.5)
    try:
        data = bytes(i % 253 for i in range(200_000))  # far more than a pty buffers
        write = asyncio.create_task(port.write(data))
        cpu0 = os.times()
        await asyncio.sleep(wire_time(len(data), 3686400) + 0.2)
        cpu = (os.times().user - cpu0.user) + (os.times().system - cpu0.system)
        assert not write.done()  # the host is not reading: the device blocks, like printf
        assert cpu < 0.2  # parked on add_writer, not polling
        got = bytearray()
        async with asyncio.timeout(30):
            while len(got) < len(data):
                got += await asyncio.to_thread(s.read, 65536)
            await write
        assert bytes(got) == data
    finally:
        s.close()


async def test_close_is_idempotent_and_wakes_reader(tmp_path: Path) -> None:
    p = PtyPort(tmp_path / "ttyX", 115200)
    await p.start()
    assert await asyncio.to_thread(os.path.islink, p.path)
    pending = asyncio.create_task(p.read())
    await asyncio.sleep(0.01)
    await p.close()
    await p.close()
    with pytest.raises(PortClosedError):
        await pending
    with pytest.raises(PortClosedError):
        await p.write(b"x")
    assert not await asyncio.to_thread(os.path.lexists, p.path)


async def test_stale_symlink_is_replaced(tmp_path: Path) -> None:
    link = tmp_path / "ttyStale"
    os.symlink("/dev/pts/does-not-exist", link)
    async with PtyPort(link, 115200) as p:
        assert await asyncio.to_thread(os.path.realpath, link) == p.device_name


async def test_wire_pair_paced_both_ways_with_transcript(tmp_path: Path) -> None:
    tr = Transcript(tmp_path / "wire.jsonl")
    a, b = wire_pair(115200, transcript=tr)
    b.baud = 57600  # as after an interface board's setbaud: each end paces at its own rate
    assert a.peer_baud() == 57600 and b.peer_baud() == 115200
    loop = asyncio.get_running_loop()
    a_data = bytes(range(256)) * 8  # 2,048 bytes: 0.178 s at 115200
    b_data = b"m-ready\r\n" * 100  # 900 bytes: 0.156 s at 57600

    async def recv(end, n: int) -> tuple[bytes, list[tuple[float, int]]]:
        buf = bytearray()
        marks: list[tuple[float, int]] = []
        async with asyncio.timeout(30):
            while len(buf) < n:
                buf += await end.read()
                marks.append((loop.time(), len(buf)))
        return bytes(buf), marks

    t0 = loop.time()
    results = await asyncio.gather(
        a.write(a_data), b.write(b_data), recv(b, len(a_data)), recv(a, len(b_data))
    )
    (got_b, marks_b), (got_a, marks_a) = results[2], results[3]
    assert got_b == a_data and got_a == b_data
    for marks, n, baud in ((marks_b, len(a_data), 115200), (marks_a, len(b_data), 57600)):
        wire = wire_time(n, baud)
        last = marks[-1][0] - t0
        print(f"\nwire_pair baud={baud} wire={wire:.4f}s last={last:.4f}s ratio={last / wire:.4f}")
        assert wire <= last < 1.15 * wire
        assert marks[0][0] - t0 < LATE
        assert_never_early(marks, t0, baud)
    await tr.aclose()
    recs = list(read_transcript(tmp_path / "wire.jsonl"))
    assert b"".join(r.data for r in recs if r.dir == "tx") == a_data
    assert b"".join(r.data for r in recs if r.dir == "rx") == b_data
    tx_times = [r.t for r in recs if r.dir == "tx"]
    assert tx_times == sorted(tx_times)


async def test_pty_transcript_records_both_directions(tmp_path: Path) -> None:
    tr = Transcript(tmp_path / "pty.jsonl")
    async with PtyPort(tmp_path / "ttyT", 115200, transcript=tr) as p:
        reader, writer = await open_host(p, 115200)
        try:
            writer.write(b"name%\r\n")
            assert (await device_read_timed(p, 7, 1))[0] == b"name%\r\n"
            await p.write(b"m-name-dut-[x]\r\nm-ready\r\n")
            await read_exactly_timed(reader, 25, 1)
            # Flushed within ~100 ms without closing the transcript.
            await asyncio.sleep(0.3)
            assert len(list(read_transcript(tr.path))) >= 2
        finally:
            writer.close()
    await tr.aclose()
    tr.close()  # idempotent
    recs = list(read_transcript(tmp_path / "pty.jsonl"))
    assert b"".join(r.data for r in recs if r.dir == "rx") == b"name%\r\n"
    assert b"".join(r.data for r in recs if r.dir == "tx") == b"m-name-dut-[x]\r\nm-ready\r\n"
    rx_t = next(r.t for r in recs if r.dir == "rx")
    tx_t = next(r.t for r in recs if r.dir == "tx")
    assert 0 <= rx_t <= tx_t
