"""The DUT protocol, host side: command encoding, line framing, classification, replies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.protocol import dut
from farm.protocol.errors import LocalProtocolError


def feed_all(host: dut.DutHost, data: bytes) -> list[dut.DutEvent]:
    return host.feed(data)


# --- encoding -------------------------------------------------------------------------------


def test_encode_appends_terminator() -> None:
    assert dut.encode_command("name") == b"name%"
    assert dut.encode_command("db load 490") == b"db load 490%"


def test_encode_accepts_exactly_80_characters() -> None:
    assert dut.encode_command("x" * 80) == b"x" * 80 + b"%"


def test_encode_refuses_81_characters_before_sending() -> None:
    with pytest.raises(LocalProtocolError, match="81 characters"):
        dut.encode_command("db " + "ab" * 39)


@pytest.mark.parametrize("bad", ["na%me", "name\r\n", "name\n", "n\x00ame", "caf\u00e9"])
def test_encode_refuses_what_the_firmware_would_mangle(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        dut.encode_command(bad)


# --- classification: the exact lines of docs/protocols.md#dut ----------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            b"m-timestamp-mode-performance",
            dut.TimestampMode(b"m-timestamp-mode-performance", "performance"),
        ),
        (b"m-timestamp-mode-energy", dut.TimestampMode(b"m-timestamp-mode-energy", "energy")),
        (b"m-init-done", dut.InitDone(b"m-init-done")),
        (b"m-ready", dut.Ready(b"m-ready", b"")),
        (b"m-name-dut-[unspecified]", dut.Name(b"m-name-dut-[unspecified]", "unspecified")),
        (
            b"m-profile-[ULPMark for tinyML Firmware V0.0.1]",
            dut.Profile(
                b"m-profile-[ULPMark for tinyML Firmware V0.0.1]",
                "ULPMark for tinyML Firmware V0.0.1",
            ),
        ),
        (b"m-model-[vww01]", dut.Model(b"m-model-[vww01]", "vww01")),
        (b"m-[Expecting 27648 bytes]", dut.Expecting(b"m-[Expecting 27648 bytes]", 27648)),
        (b"m-load-done", dut.LoadDone(b"m-load-done")),
        (b"m-warmup-start-10", dut.WarmupStart(b"m-warmup-start-10", 10)),
        (b"m-warmup-done", dut.WarmupDone(b"m-warmup-done")),
        (b"m-infer-start-70", dut.InferStart(b"m-infer-start-70", 70)),
        (b"m-infer-done", dut.InferDone(b"m-infer-done")),
        (b"m-lap-us-67410227", dut.Lap(b"m-lap-us-67410227", 67410227)),
        (b"m-lap-us-4294967295", dut.Lap(b"m-lap-us-4294967295", 4294967295)),
        (
            b"m-buffer-00-01-0a-ff-10-20-30-40",
            dut.BufferDump(b"m-buffer-00-01-0a-ff-10-20-30-40", bytes.fromhex("00010aff10203040")),
        ),
        (
            b"e-[Unknown command: foo]",
            dut.DeviceError(b"e-[Unknown command: foo]", "Unknown command: foo"),
        ),
        (
            b"Supplied buffer size 99999 exceeds maximum of 27648",
            dut.BufferTooLarge(
                b"Supplied buffer size 99999 exceeds maximum of 27648", 99999, 27648
            ),
        ),
        (
            b"Input db has 100 elemented, expected 490",
            dut.InputSizeMismatch(b"Input db has 100 elemented, expected 490", 100, 490),
        ),
        (b"", dut.Blank(b"")),
        (
            b"help         : Print this information",
            dut.Unknown(b"help         : Print this information"),
        ),
    ],
)
def test_classify_every_line_kind(line: bytes, expected: dut.DutEvent) -> None:
    assert dut.classify_line(line) == expected


@pytest.mark.parametrize(
    ("line", "values"),
    [
        # kws: 12 values built from integer math, 3 decimals
        (
            b"m-results-[0.000,0.000,0.000,0.000,0.000,0.000,0.000,0.000,0.000,0.000,0.000,0.992]",
            (0.0,) * 11 + (0.992,),
        ),
        (b"m-results-[0.1000,0.000]", (0.1, 0.0)),  # exact 1.0 printed by the kws port
        (b"m-results-[0.023,0.977,]", (0.023, 0.977)),  # vww trailing comma
        (b"m-results-[12.345]", (12.345,)),  # ad reconstruction error
        (b"m-results-[0.1,,0.2]", (0.1, 0.2)),  # empty fields ignored
        (b"m-results-[]", ()),
    ],
)
def test_results_ignore_empty_fields(line: bytes, values: tuple[float, ...]) -> None:
    event = dut.classify_line(line)
    assert isinstance(event, dut.Results)
    assert event.values == pytest.approx(values)


#: The start of a line of each kind the classifier knows.
_LINE_KINDS = (
    b"m-timestamp-mode-performance", b"m-init-done", b"m-name-dut-[x]", b"m-profile-[p]",
    b"m-model-[kws01]", b"m-[Expecting 12 bytes]", b"m-load-done", b"m-warmup-start-3",
    b"m-warmup-done", b"m-infer-start-1", b"m-infer-done", b"m-lap-us-123",
    b"m-results-[0.1,0.2]", b"m-buffer-0a-ff", b"e-[bad]",
    b"Supplied buffer size 9 exceeds maximum of 8", b"Input db has 1 elemented, expected 2",
    b"Received command: db load 4", b"Listening for I2S data ... ", b"DMA receive initiated.",
    b"I2S Rx currently in progress. Ignoring request", b"Streaming stopped.",
    b"I2S is already idle.  Ignoring stop request", b"target activations: ", b"[1, 2, -3, ",
    b"[]", b"]", b"Expecting 4 bytes", b"31 bytes received", b"m-buff-ptr-7", b"Error: no",
    b"Unrecognized command x", b"Empty command (only a % read).  Type 'help%' for help",
)  # fmt: skip


@given(
    # Each kind's line whole, cut short or just begun, or nothing; then anything; then a
    # plausible end.
    st.sampled_from([b""] + [line[:cut] for line in _LINE_KINDS for cut in (None, 1, 2, 3, 5)]),
    st.binary(max_size=6).filter(lambda b: b"\n" not in b),
    st.sampled_from([b"", b"0", b"1, ", b"]", b"-", b" bytes]"]),
)
def test_choosing_patterns_by_the_first_characters_classifies_as_trying_them_all(
    start: bytes, middle: bytes, end: bytes
) -> None:
    line = start + middle + end
    chosen = dut.classify_line(line)
    every = tuple(range(len(dut._PATTERNS)))
    with pytest.MonkeyPatch.context() as patch:
        # No table: every line tries every pattern, in order, as the classifier did before.
        patch.setattr(dut, "_BY_KEY", {})
        patch.setattr(dut, "_SHORT_PREFIX", every)
        patch.setattr(dut, "_SEEN", {})
        assert chosen == dut.classify_line(line)


def test_repeated_lines_are_classified_once_and_the_memory_stays_bounded() -> None:
    results = b"m-results-[0.000,0.992]"
    first = dut.classify_line(results)
    assert dut.classify_line(results) is first
    assert dut.classify_line(b"m-lap-us-1234") == dut.Lap(b"m-lap-us-1234", 1234)
    assert b"m-lap-us-1234" not in dut._SEEN  # a lap never repeats: not kept
    for n in range(3 * dut._SEEN_MAX):
        assert dut.classify_line(b"m-infer-start-%d" % n) == dut.InferStart(
            b"m-infer-start-%d" % n, n
        )
        assert len(dut._SEEN) <= dut._SEEN_MAX


def test_results_with_non_numbers_stay_unknown() -> None:
    assert isinstance(dut.classify_line(b"m-results-[0.1,abc]"), dut.Unknown)


@pytest.mark.parametrize(
    "line",
    [b"\xff\xfe\x80m-name", b"m-lap-us-12\x8034", b"\x00\x01\x02", bytes(range(0x80, 0x100))],
)
def test_bytes_from_noise_are_garbage_never_an_exception(line: bytes) -> None:
    assert isinstance(dut.classify_line(line), dut.Garbage)


def test_ready_with_noise_glued_in_front_is_garbage_not_end_of_reply() -> None:
    assert isinstance(dut.classify_line(b"\xc3\xa5m-ready"), dut.Garbage)


def test_every_possible_byte_pair_classifies() -> None:
    for a in range(256):
        for b in (0x00, 0x0D, 0x41, 0x80, 0xFF):
            dut.classify_line(bytes([a, b]))


# --- framing and replies ----------------------------------------------------------------------


def test_reply_assembly_of_infer_across_arbitrary_chunking() -> None:
    stream = (
        b"m-warmup-start-10\r\nm-warmup-done\r\nm-infer-start-70\r\nm-lap-us-67410227\r\n"
        b"m-lap-us-67565820\r\nm-infer-done\r\nm-results-[0.000,0.992]\r\nm-ready\r\n"
    )
    for size in (1, 2, 7, 64, len(stream)):
        host = dut.DutHost()
        assert host.send("infer 70 10") == b"infer 70 10%"
        for i in range(0, len(stream), size):
            host.feed(stream[i : i + size])
        reply = host.next_reply()
        assert reply is not None
        assert host.state is dut.DutState.IDLE
        assert reply.command == "infer 70 10"
        assert reply.laps == [67410227, 67565820]
        assert reply.results == (0.0, 0.992)
        assert len(reply.lines) == 8


def test_cr_and_nul_are_dropped_and_lf_only_lines_frame() -> None:
    host = dut.DutHost()
    host.send("db load 99999")
    host.feed(b"Supplied buffer size 99999 exceeds maximum of 27648\nm-re\x00ady\r\n")
    reply = host.next_reply()
    assert reply is not None
    assert [type(e) for e in reply.events] == [dut.BufferTooLarge, dut.Ready]
    assert reply.errors[0].maximum == 27648


def test_second_command_while_awaiting_is_refused() -> None:
    host = dut.DutHost()
    host.send("infer 1 0")
    with pytest.raises(LocalProtocolError, match="still outstanding"):
        host.send("name")


def test_unsolicited_banner_is_kept_apart() -> None:
    host = dut.DutHost()
    events = host.feed(
        b"m-timestamp-mode-performance\r\nm-lap-us-1000\r\nm-init-done\r\nm-ready\r\n"
    )
    assert [type(e) for e in events] == [dut.TimestampMode, dut.Lap, dut.InitDone, dut.Ready]
    assert host.next_reply() is None
    # The banner's m-ready completed nothing, and none of it leaks into the next reply.
    host.send("name")
    host.feed(b"m-name-dut-[x]\r\nm-ready\r\n")
    reply = host.next_reply()
    assert reply is not None
    assert reply.lines == (b"m-name-dut-[x]", b"m-ready")


def test_reset_inside_reply_is_flagged() -> None:
    host = dut.DutHost()
    host.send("infer 10 0")
    host.feed(
        b"m-warmup-start-0\r\nm-timestamp-mode-performance\r\nm-lap-us-5\r\nm-init-done\r\nm-ready\r\n"
    )
    reply = host.next_reply()
    assert reply is not None and reply.reset_seen


def test_abandon_forgets_partial_line_and_reply() -> None:
    host = dut.DutHost()
    host.send("infer 1 0")
    host.feed(b"m-warmup-start-0\r\nm-warm")
    partial = host.abandon()
    assert [type(e) for e in partial] == [dut.WarmupStart]
    assert host.state is dut.DutState.IDLE
    host.send("name")
    host.feed(b"up-done\r\nm-name-dut-[x]\r\nm-ready\r\n")
    reply = host.next_reply()
    assert reply is not None
    assert isinstance(reply.events[0], dut.Unknown)  # the stale half line is not glued on


def test_an_endless_line_of_noise_is_cut() -> None:
    host = dut.DutHost()
    host.send("name")
    events = host.feed(b"\xff" * 10000)
    assert events and all(isinstance(e, dut.Garbage) for e in events)


# --- the 32-bit counter ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "elapsed"),
    [(100, 250, 150), (4294967000, 704, 1000), (0, 4294967295, 4294967295), (7, 7, 0)],
)
def test_elapsed_handles_one_wrap(start: int, end: int, elapsed: int) -> None:
    assert dut.elapsed_us(start, end) == elapsed


def test_reply_size_bound_covers_the_real_replies() -> None:
    infer_reply = (
        b"m-warmup-start-10\r\nm-warmup-done\r\nm-infer-start-160000\r\nm-lap-us-4294967295\r\n"
        b"m-lap-us-4294967295\r\nm-infer-done\r\nm-results-["
        + b",".join([b"0.999"] * 12)
        + b"]\r\nm-ready\r\n"
    )
    assert len(infer_reply) <= dut.reply_size_bound("infer 160000 10", outputs=12)
    assert len(b"m-name-dut-[unspecified]\r\nm-ready\r\n") <= dut.reply_size_bound("name")
