"""Every host parser yields the same events however the received bytes are chunked.

A serial port hands over whatever the OS buffered: a line may arrive whole, split anywhere, or
one byte at a time. For each protocol (DUT, interface board, LPM01A) a byte stream is built
from the device's real line shapes with noise mixed in, fed to a host in one piece and again
split at hypothesis-chosen points and byte by byte; the events, the completed replies and the
final state must not differ. Lines stay far below ``LineFramer``'s 4096-byte cut, the one
place where chunking is allowed to matter (an over-long line is cut when the buffer overflows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.protocol import dut, interface, lpm01a
from farm.protocol.events import Event
from farm.protocol.lpm01a_firmware import format_event, format_sample, format_timestamp

# Each example parses a few hundred bytes three ways; 100 examples per protocol keep the whole
# file to a second or two.
CHUNKING = settings(max_examples=100, deadline=None, database=None)

Run = Callable[[Iterable[bytes]], Any]


def split(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` cut at every position in ``cuts`` (empty chunks included: a read may return
    nothing)."""
    start = 0
    for cut in sorted(cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    """``data`` one byte per chunk."""
    return (data[i : i + 1] for i in range(len(data)))


def check_chunking(run: Run, data: bytes, cuts: list[int]) -> None:
    """The observation of ``run`` is the same for the whole stream, for ``cuts`` and for
    1-byte chunks; and it holds one event per complete line, each an :class:`Event`."""
    whole = run([data])
    events = whole[0]
    assert len(events) == data.count(b"\n")
    assert all(isinstance(e, Event) for e in events)
    assert run(split(data, cuts)) == whole
    assert run(byte_by_byte(data)) == whole


@st.composite
def stream(draw: st.DrawFn, lines: st.SearchStrategy[bytes]) -> bytes:
    """Lines joined with the endings devices use (CRLF, and LF for the LF-only messages), a
    stray CR or NUL now and then, and maybe a partial last line."""
    ending = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r\r\n", b"\x00\r\n"])
    body = b"".join(line + draw(ending) for line in draw(st.lists(lines, max_size=14)))
    return body + draw(st.sampled_from([b"", b"m-rea", b"\r", b"[dut]: m-"]))


def cut_points(data: bytes) -> st.SearchStrategy[list[int]]:
    """Positions at which to split ``data`` (repeats give empty chunks)."""
    return st.lists(st.integers(0, len(data)), max_size=12)


#: Noise: any bytes, LF and CR included (an LF inside just ends a line early).
garbage = st.binary(max_size=12)
small = st.integers(0, 99_999).map(lambda n: str(n).encode())


# --------------------------------------------------------------------------------------------
# DUT
# --------------------------------------------------------------------------------------------

dut_line = st.one_of(
    st.sampled_from(
        [
            b"m-timestamp-mode-performance",
            b"m-timestamp-mode-energy",
            b"m-init-done",
            b"m-ready",
            b"m-name-dut-[unspecified]",
            b"m-profile-[ULPMark for tinyML Firmware V0.0.1]",
            b"m-model-[vww01]",
            b"m-load-done",
            b"m-warmup-done",
            b"m-infer-done",
            b"m-buffer-01-02-ab-ff",
            b"e-[Unknown command: bogus]",
            b"",
            b"help         : Print this information",
            b"m-results-[0.250,0.750,]",
            b"noise m-ready",
        ]
    ),
    small.map(lambda n: b"m-lap-us-" + n),
    small.map(lambda n: b"m-[Expecting " + n + b" bytes]"),
    small.map(lambda n: b"m-infer-start-" + n),
    small.map(lambda n: b"m-warmup-start-" + n),
    st.tuples(small, small).map(
        lambda t: b"Supplied buffer size " + t[0] + b" exceeds maximum of " + t[1]
    ),
    st.tuples(small, small).map(
        lambda t: b"Input db has " + t[0] + b" elemented, expected " + t[1]
    ),
    garbage,
)


def dut_run(command: str | None) -> Run:
    """Feed the chunks to a DutHost (after sending ``command``); observe events, replies and
    the final state."""

    def run(chunks: Iterable[bytes]) -> Any:
        host = dut.DutHost()
        if command is not None:
            host.send(command)
        events = [e for chunk in chunks for e in host.feed(chunk)]
        replies = []
        while (reply := host.next_reply()) is not None:
            replies.append(reply)
        return events, replies, host.state, host.command

    return run


@CHUNKING
@given(st.data(), st.sampled_from([None, "name", "infer 1 0"]))
def test_dut_host_ignores_chunking(data: st.DataObject, command: str | None) -> None:
    # m-ready drawn often, so that replies complete and later lines arrive unsolicited.
    raw = data.draw(stream(st.one_of(dut_line, dut_line, st.just(b"m-ready"))))
    check_chunking(dut_run(command), raw, data.draw(cut_points(raw)))


# --------------------------------------------------------------------------------------------
# Interface board
# --------------------------------------------------------------------------------------------

#: (command as sent, the board's real reply lines): a board command and passthroughs.
INTERFACE_EXCHANGES = [
    ("name", [b"tinyML Enhanced Interface Board", b"m-ready"]),
    ("checkbaud", [b"baud is: 9600", b"m-ready"]),
    ("print_dutycycle", [b"Duty cycle start times (s)", b"1, 2, ", b"3, 4, m-ready"]),
    (
        "dut name",
        [
            b"m-dut-passthrough(name)",
            b"m-ready",
            b"[dut]: m-name-dut-[unspecified]",
            b"[dut]: m-ready",
        ],
    ),
    (
        "dut infer 1 0",
        [
            b"m-dut-passthrough(infer 1 0)",
            b"m-ready",
            b"[dut]: m-infer-start-1",
            b"Input db has 3 elemented, expected 4",  # the tail of a bare-LF DUT line
            b"m-ready",  # a merged m-ready: the wedge
        ],
    ),
]

interface_line = st.one_of(
    st.sampled_from(
        [
            b"m-ready",
            b"[dut]: m-ready",
            b"[dut]: m-lap-us-1234",
            b"[dut]: ",
            b"m-dut-passthrough(name)",
            b"m-dut-passthrough(other)",
            b"tinyML Enhanced Interface Board",
            b"Detection Timestamps (ms)",
            b"12, 34, m-ready",
            b"song.wav",
        ]
    ),
    small.map(lambda n: b"set baud to: " + n),
    small.map(lambda n: b"baud is: " + n),
    garbage,
)


@st.composite
def interface_stream(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real exchange with noise lines inserted anywhere, then more lines after it."""
    command, reply = draw(st.sampled_from(INTERFACE_EXCHANGES))
    lines = list(reply)
    for _ in range(draw(st.integers(0, 3))):
        lines.insert(draw(st.integers(0, len(lines))), draw(interface_line))
    more = draw(stream(st.sampled_from(lines))) if draw(st.booleans()) else b""
    return command, b"".join(line + b"\r\n" for line in lines) + more


def interface_run(command: str) -> Run:
    """Feed the chunks to an InterfaceHost after sending ``command``; observe events (also
    those a desync error carries), the desync lines, replies and the final state."""

    def run(chunks: Iterable[bytes]) -> Any:
        host = interface.InterfaceHost()
        host.send(command)
        events: list[interface.InterfaceEvent] = []
        desyncs: list[bytes] = []
        for chunk in chunks:
            try:
                events += host.feed(chunk)
            except interface.InterfaceDesyncError as exc:
                events += exc.events
                desyncs.append(exc.line)
        return events, desyncs, host.take_replies(), host.state

    return run


@CHUNKING
@given(st.data())
def test_interface_host_ignores_chunking(data: st.DataObject) -> None:
    command, raw = data.draw(interface_stream())
    check_chunking(interface_run(command), raw, data.draw(cut_points(raw)))


# --------------------------------------------------------------------------------------------
# LPM01A
# --------------------------------------------------------------------------------------------

PROMPT = lpm01a.PROMPT.encode()
LPM_COMMANDS = ["volt get", "stop", "pwr on", "freq 1k"]

energy = st.floats(0, 1e-2, allow_nan=False)
lpm_line = st.one_of(
    st.sampled_from(LPM_COMMANDS).map(lambda c: PROMPT + b"ack " + c.encode()),
    st.sampled_from(LPM_COMMANDS).map(lambda c: PROMPT + b"error " + c.encode()),
    st.sampled_from(
        [
            PROMPT + b"ack volt get 3300-03",
            PROMPT + b"ack htc",
            PROMPT + b"Error detail: wrong number of arguments",
            PROMPT + b"Acquisition completed",
            PROMPT,
            b"TimeStamp: 12s",
            b"1234-08junk",
            b"33930-08",
            b"summary begin",
        ]
    ),
    energy.map(lambda j: format_sample(j)[:-2]),
    st.lists(energy, min_size=2, max_size=4).map(
        lambda js: b"".join(format_sample(j)[:-2] for j in js)
    ),
    st.tuples(st.integers(0, 2_000_000), st.integers(0, 99)).map(
        lambda t: format_timestamp(*t)[:-2]
    ),
    st.integers(0, 999).map(lambda n: format_event(n)[:-2]),
    garbage,
)


def lpm_run(command: str, error_detail: bool) -> Run:
    """Feed the chunks to an Lpm01aHost after sending ``command``; observe events, replies and
    the final state."""

    def run(chunks: Iterable[bytes]) -> Any:
        host = lpm01a.Lpm01aHost(error_detail=error_detail)
        host.send(command)
        events = [e for chunk in chunks for e in host.feed(chunk)]
        return events, host.take_replies(), host.state, host.outstanding

    return run


@CHUNKING
@given(st.data(), st.sampled_from(LPM_COMMANDS), st.booleans())
def test_lpm01a_host_ignores_chunking(
    data: st.DataObject, command: str, error_detail: bool
) -> None:
    raw = data.draw(stream(lpm_line))
    check_chunking(lpm_run(command, error_detail), raw, data.draw(cut_points(raw)))
