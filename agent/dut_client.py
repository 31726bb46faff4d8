"""The DUT client: the benchmark firmware's API over any channel (direct serial link, or the
interface board's passthrough), with every wait bounded by the wire-time model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from agent.errors import DeviceCommandError, DeviceReset, DeviceTimeout, GarbledReply, ResyncFailed
from agent.serial_link import SerialLink
from farm.board_timing import DRAIN_MAX_BYTES
from farm.logs import get_logger
from farm.models import ModelSpec, results_well_formed
from farm.protocol import dut
from farm.protocol.lines import text
from farm.wire import WireModel

log = get_logger("agent.dut_client")

#: Bytes per ``db`` chunk on a direct link: 62 hex digits, a 65-character command, as the
#: official runner sends (38 would still fit the 80-character buffer).
DIRECT_CHUNK = 31


class DutChannel(Protocol):
    """How DUT commands reach the DUT: a direct link or the interface board's passthrough."""

    port: str
    chunk_bytes: int
    """Bytes per ``db`` chunk this path can carry."""
    needs_resync: bool
    """True after a timeout: late output of the abandoned command may still arrive, so the
    next command must not be sent before :meth:`resync`."""

    @property
    def dut_baud(self) -> int:
        """The baud of the DUT's own UART on this path (what its lap lines print at)."""
        ...

    async def exchange(
        self, command: str, *, reply_bytes: int, compute_s: float = 0.0
    ) -> dut.DutReply:
        """Send one DUT command; return its complete reply (up to ``m-ready``)."""
        ...

    async def exchange_each(
        self,
        commands: Sequence[str],
        *,
        reply_bytes: int,
        compute_s: float = 0.0,
        check: Callable[[dut.DutReply], object] | None = None,
    ) -> dut.DutReply:
        """Send ``commands`` in turn, each after the previous reply passed ``check``;
        return the last reply."""
        ...

    async def resync(self) -> None:
        """Bring the path back to a known idle state after a timeout or garbage."""
        ...


#: The events a reply that passes :func:`check_reply` may hold none of (Unknown aside for help).
_SUSPECT = (
    dut.TimestampMode,
    dut.InitDone,
    dut.Garbage,
    dut.DeviceError,
    dut.BufferTooLarge,
    dut.InputSizeMismatch,
    dut.Unrecognized,
    dut.Unknown,
)


def check_reply(port: str, reply: dut.DutReply) -> dut.DutReply:
    """Raise on a reply that cannot be trusted or that reports an error."""
    for event in reply.events:
        if isinstance(event, _SUSPECT):
            break
    else:
        return reply  # one pass for a clean reply, checked for each kind of trouble below
    if reply.reset_seen:
        raise DeviceReset(f"{port}: the DUT rebooted during {reply.command!r}")
    if reply.garbage:
        sample = reply.garbage[0].line[:40]
        raise GarbledReply(f"{port}: garbled reply to {reply.command!r}: {sample!r}")
    if reply.errors:
        raise DeviceCommandError(port, reply.command, dut.lines_text(reply.errors))
    unknown = reply.of(dut.Unknown)
    if unknown and not reply.command.startswith("help"):
        # Every line of a reply but help's has a known shape: a lost or corrupted byte
        # turns one into an unknown line, which must not pass as a good reply.
        raise GarbledReply(
            f"{port}: unexpected line in reply to {reply.command!r}: {unknown[0].line[:40]!r}"
        )
    return reply


class DirectChannel:
    """DUT commands over the DUT's own serial port."""

    chunk_bytes = DIRECT_CHUNK

    def __init__(
        self,
        link: SerialLink,
        wire: WireModel | None = None,
        *,
        busy_limit_s: float = dut.SILENT_PHASE_LIMIT_S,
    ) -> None:
        self.link = link
        self.busy_limit_s = busy_limit_s
        """How long :meth:`resync` keeps trying: the longest a healthy DUT stays silent."""
        self.port = link.port
        self.wire = wire or WireModel(link.baud)
        self.host = dut.DutHost()
        self._lock = asyncio.Lock()
        self.needs_resync = False
        self._answered = False
        """A complete reply has arrived on this link at least once (the baud is right)."""

    @property
    def dut_baud(self) -> int:
        """The link's baud: on a direct link it is the DUT's."""
        return self.link.baud

    async def exchange(
        self, command: str, *, reply_bytes: int, compute_s: float = 0.0
    ) -> dut.DutReply:
        """Send ``command``; wait at most the modelled time for its reply."""
        return await self.exchange_each([command], reply_bytes=reply_bytes, compute_s=compute_s)

    async def exchange_each(
        self,
        commands: Sequence[str],
        *,
        reply_bytes: int,
        compute_s: float = 0.0,
        check: Callable[[dut.DutReply], object] | None = None,
    ) -> dut.DutReply:
        """Send ``commands`` one after the other, each only once the previous reply is
        complete and has passed ``check``; return the last reply.

        Received bytes go straight from the transport into the parser, and the next command
        is written from that same callback: no event-loop turn between a reply's last byte
        and the next command (a task wake-up per ``db`` chunk cost the bench ~0.2 ms, a
        quarter of a chunk's wire time at 921600 baud). Each command gets its own deadline
        from the wire-time model; one timer, re-armed lazily, enforces them.
        """
        async with self._lock:
            stale = self.link.read_nowait()
            if stale:
                # Output nobody asked for (a boot banner, a late line): not part of this reply.
                self.host.feed(stale)
                log.info("unsolicited", port=self.port, bytes=len(stale))
            loop = asyncio.get_running_loop()
            done: asyncio.Future[dut.DutReply] = loop.create_future()
            pending = iter(commands)
            current = _Outstanding()

            def send(command: str) -> None:
                data = self.host.send(command)
                current.command = command
                current.timeout = self.wire.timeout(len(data), reply_bytes, compute_s)
                current.deadline = loop.time() + current.timeout
                current.received_before = self.link.bytes_in
                self.link.write(data)

            def on_data(chunk: bytes) -> None:
                self.host.feed(chunk)
                reply = self.host.next_reply()
                if reply is None or done.done():
                    return
                try:
                    if check is not None:
                        check(reply)
                    self._answered = True
                    following = next(pending, None)
                    if following is None:
                        done.set_result(reply)
                    else:
                        send(following)
                except Exception as exc:
                    done.set_exception(exc)

            def on_lost() -> None:
                if not done.done():
                    done.set_exception(self.link.lost_error())

            timer: asyncio.TimerHandle | None = None

            def on_timer() -> None:
                nonlocal timer
                if done.done():
                    return
                if loop.time() < current.deadline:
                    timer = loop.call_at(current.deadline, on_timer)
                else:
                    done.set_exception(TimeoutError())

            self.link.attach(on_data, on_lost)
            try:
                if not self.link.is_open:
                    raise self.link.lost_error()
                first = next(pending, None)
                if first is None:
                    raise ValueError("exchange_each needs at least one command")
                send(first)
                timer = loop.call_at(current.deadline, on_timer)
                return await done
            except TimeoutError:
                partial = self.host.abandon()
                self.needs_resync = True
                garbled = any(isinstance(e, dut.Garbage) for e in partial)
                got = self.link.bytes_in - current.received_before
                raise DeviceTimeout(
                    self.port,
                    current.command,
                    current.timeout,
                    got,
                    garbled,
                    self.link.baud,
                    answered_before=self._answered,
                ) from None
            except BaseException:
                # The link failed, a reply failed its check, or we were cancelled: whatever
                # is still on its way belongs to no command.
                self.host.abandon()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                self.link.attach(None)

    async def resync(self) -> None:
        """Flush, end any half-received command with ``%``, drain until the line is idle,
        then check the DUT answers ``name``.

        A DUT that is merely slower than modelled may still be computing the abandoned
        command (it reads nothing meanwhile, and a ``%`` sent now is overrun): the procedure
        repeats for up to ``busy_limit_s``, so a busy but healthy board is recovered and only
        a hung one fails (``ResyncFailed``)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.busy_limit_s
        while True:
            async with self._lock:
                self.host.abandon()
                self.link.discard_input()
                self.link.write(b"%")
                await drain_until_idle(self.link, self.wire)
                self.host.abandon()
            self.needs_resync = False
            try:
                reply = await self.exchange("name", reply_bytes=dut.reply_size_bound("name"))
                if reply.of(dut.Name):
                    return
                problem: str = f"reply has no name line: {dut.lines_text(reply.events)}"
            except (TimeoutError, GarbledReply) as exc:
                problem = str(exc)
            if loop.time() >= give_up:
                self.needs_resync = True
                raise ResyncFailed(
                    f"{self.port}: DUT did not answer 'name' after a resync: {problem}"
                )


async def drain_until_idle(
    link: SerialLink, wire: WireModel, max_bytes: int = DRAIN_MAX_BYTES
) -> int:
    """Read and discard until the line has been silent for the model's idle gap; give up
    after the time ``max_bytes`` would take (a device spewing noise is never idle)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wire.timeout(0, max_bytes)
    drained = 0
    while loop.time() < deadline:
        try:
            async with asyncio.timeout(min(wire.idle_gap(), max(deadline - loop.time(), 0))):
                drained += len(await link.read())
        except TimeoutError:
            break
    return drained


@dataclass(slots=True)
class _Outstanding:
    """The command in flight during :meth:`DirectChannel.exchange_each`."""

    command: str = ""
    timeout: float = 0.0
    deadline: float = 0.0
    received_before: int = 0


@dataclass(frozen=True, slots=True)
class InferResult:
    """One ``infer N W``: DUT-timed window and the last inference's output."""

    count: int
    warmup: int
    start_us: int | None
    end_us: int | None
    elapsed_us: int | None
    """DUT µs between the first and the last lap, across a 32-bit wrap; ``None`` on the
    energy build (its timestamps are pin pulses the energy monitor sees)."""
    results: tuple[float, ...]
    reply: dut.DutReply


class DutClient:
    """The DUT's command set.

    ``latency_s`` is the per-inference time the wire-time model budgets for ``infer``: what
    the caller knows, else unknown until the first timed window. Unknown, an ``infer`` gets
    the official silent-phase limit per phase (30 s); known, it gets (N + W) inferences at
    the last window's mean plus three of the slowest per-inference time seen, so that one
    tail inference does not time out a single-inference command.
    """

    #: How many of the slowest inferences seen an ``infer`` budget adds on top of the mean.
    TAIL_ALLOWANCE = 3

    def __init__(
        self, channel: DutChannel, model: ModelSpec | None = None, latency_s: float | None = None
    ) -> None:
        self.channel = channel
        self.model = model
        self.latency_s = latency_s
        self.slowest_s = latency_s or 0.0
        self._well_formed: bytes | None = None
        """The last ``m-results`` line found well formed (a latency run repeats one input)."""

    def infer_budget_s(self, count: int, warmup: int) -> float:
        """Modelled compute time of ``infer count warmup`` (see the class docstring)."""
        if self.latency_s is None:
            return dut.SILENT_PHASE_LIMIT_S * (2 if warmup else 1)
        slowest = max(self.slowest_s, self.latency_s)
        return (count + warmup) * self.latency_s + self.TAIL_ALLOWANCE * slowest

    @property
    def outputs(self) -> int:
        """Result vector length the reply-size model assumes."""
        return self.model.outputs if self.model else 12

    async def command(self, command: str, compute_s: float = 0.0) -> dut.DutReply:
        """Any command; the reply is checked (errors, garbage, reset raise). After a timeout
        the channel is resynced first."""
        if self.channel.needs_resync:
            await self.channel.resync()
        reply_bytes = dut.reply_size_bound(command, self.outputs)
        reply = await self.channel.exchange(command, reply_bytes=reply_bytes, compute_s=compute_s)
        return check_reply(self.channel.port, reply)

    async def name(self) -> str:
        """The vendor string of ``m-name-dut-[...]``."""
        reply = await self.command("name")
        return _one(self.channel.port, reply, dut.Name).vendor

    async def profile(self) -> tuple[str, str]:
        """``(profile, model id)`` from ``m-profile-[...]`` and ``m-model-[...]``."""
        reply = await self.command("profile")
        profile = _one(self.channel.port, reply, dut.Profile).profile
        return profile, _one(self.channel.port, reply, dut.Model).model

    async def help(self) -> list[str]:
        """The firmware's help text, line by line."""
        reply = await self.command("help")
        return [dut.lines_text([e]) for e in reply.events if not isinstance(e, dut.Ready)]

    async def timestamp(self) -> int | None:
        """The µs counter (performance build); ``None`` on the energy build (a pin pulse)."""
        laps = (await self.command("timestamp")).laps
        return laps[-1] if laps else None

    async def load(self, data: bytes) -> None:
        """Download one input: ``db load N`` then ``db <hex>`` chunks. Unlike the official
        runner, every reply is checked and the final ``m-load-done`` is required."""
        reply = await self.command(f"db load {len(data)}")
        expecting = _one(self.channel.port, reply, dut.Expecting)
        if expecting.nbytes != len(data):
            raise GarbledReply(
                f"{self.channel.port}: DUT expects {expecting.nbytes} bytes, not {len(data)}"
            )
        step = self.channel.chunk_bytes
        port = self.channel.port
        reply = await self.channel.exchange_each(
            ["db " + data[offset : offset + step].hex() for offset in range(0, len(data), step)],
            reply_bytes=dut.reply_size_bound("db"),
            check=lambda chunk_reply: check_reply(port, chunk_reply),
        )
        if not data or not reply.of(dut.LoadDone):
            raise GarbledReply(
                f"{self.channel.port}: DUT did not confirm the load of {len(data)} bytes"
            )

    async def infer(self, count: int, warmup: int = 0) -> InferResult:
        """``infer N W``: run ``warmup`` untimed then ``count`` timed inferences."""
        started = time.monotonic()
        reply = await self.command(
            f"infer {count} {warmup}", compute_s=self.infer_budget_s(count, warmup)
        )
        wall = time.monotonic() - started
        port = self.channel.port
        # One pass over the reply for what _one() and reply.laps would each walk it for.
        start: dut.InferStart | None = None
        printed: dut.Results | None = None
        laps: list[int] = []
        for event in reply.events:
            if isinstance(event, dut.Lap):
                laps.append(event.us)
            elif isinstance(event, dut.InferStart):
                start = event
            elif isinstance(event, dut.Results):
                printed = event
        if start is None:
            start = _one(port, reply, dut.InferStart)  # raises: no such line
        if start.count != count:
            raise GarbledReply(f"{port}: asked for {count} inferences, DUT started {start.count}")
        if printed is None:
            printed = _one(port, reply, dut.Results)  # raises: no such line
        if self.model is not None and printed.line != self._well_formed:
            body = text(printed.line)[len("m-results-[") : -1]
            if not results_well_formed(self.model.result_format, body, self.model.outputs):
                raise GarbledReply(f"{port}: malformed results line {printed.line[:60]!r}")
            self._well_formed = printed.line
        start_us = end_us = elapsed = None
        if laps:
            if len(laps) != 2:
                raise GarbledReply(
                    f"{port}: reply to {reply.command!r} has {len(laps)} laps, not 2"
                )
            start_us, end_us = laps
            elapsed = dut.elapsed_us(start_us, end_us)
            # The DUT's window lies inside the host's exchange: a lap with a lost or changed
            # digit shows up as a window longer than the exchange (50 ppm crystals aside).
            if elapsed / 1e6 > wall * 1.02 + 0.005:
                raise GarbledReply(
                    f"{port}: laps {start_us}..{end_us} span {elapsed} µs, longer than the "
                    f"{wall:.3f} s exchange"
                )
            if elapsed > 0:
                self.latency_s = elapsed / 1e6 / count
                self.slowest_s = max(self.slowest_s, self.latency_s)
        return InferResult(count, warmup, start_us, end_us, elapsed, printed.values, reply)

    async def results(self) -> tuple[float, ...]:
        """The last inference's output again (``results``)."""
        reply = await self.command("results")
        found = reply.results
        if found is None:
            raise GarbledReply(f"{self.channel.port}: reply to 'results' has no m-results line")
        return found

    async def resync(self) -> None:
        """Recover the link after a timeout or garbage (see the channel's ``resync``)."""
        await self.channel.resync()


E = TypeVar("E", bound=dut.DutEvent)


def _one(port: str, reply: dut.DutReply, kind: type[E]) -> E:
    found = reply.of(kind)
    if not found:
        raise GarbledReply(f"{port}: reply to {reply.command!r} lacks a {kind.__name__} line")
    return found[-1]
