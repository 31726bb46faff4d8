"""Unit tests of farm.protocol.interface and interface_firmware against the exact strings."""

from __future__ import annotations

import contextlib
import random

import pytest

from farm.protocol.errors import LocalProtocolError, RemoteProtocolError
from farm.protocol.interface import (
    DUT_CMD_MAX,
    SWW_DUT_CMD_MAX,
    BaudIs,
    BaudSet,
    BoardName,
    CommandMatch,
    DutLine,
    InterfaceDesyncError,
    InterfaceHost,
    InterfaceReply,
    InterfaceState,
    PassthroughAck,
    Ready,
    Unknown,
    classify_line,
    effective_baud,
    encode_command,
    encode_passthrough,
    match_command,
)
from farm.protocol.interface_firmware import (
    PLAY_ERROR,
    Hang,
    InterfaceFirmware,
    Passthrough,
    PassthroughDone,
    PassthroughForwarder,
    Play,
    SetBaud,
    Write,
    ZeroTimer,
)

READY = b"m-ready\r\n"


def written(actions: list) -> bytes:
    """Every host-bound byte in an action list."""
    return b"".join(a.data for a in actions if isinstance(a, Write))


class FakeBoard:
    """Firmware + forwarder + a scripted DUT: host bytes in, host-bound bytes out."""

    def __init__(self, dut_replies: dict[str, bytes], **kwargs: object) -> None:
        self.fw = InterfaceFirmware(**kwargs)  # type: ignore[arg-type]
        self.fwd = PassthroughForwarder()
        self.dut_replies = dut_replies
        self.to_dut: list[bytes] = []

    def host_write(self, data: bytes) -> bytes:
        out = bytearray()
        pending = list(self.fw.feed(data))
        while pending:
            action = pending.pop(0)
            if isinstance(action, Write):
                out += action.data
            elif isinstance(action, Passthrough):
                self.to_dut.append(action.command.encode() + b"%")
                fwd = self.fwd.start() + self.fwd.feed(self.dut_replies.get(action.command, b""))
                out += written(fwd)
                if any(isinstance(a, PassthroughDone) for a in fwd):
                    pending += self.fw.passthrough_done()
        return bytes(out)


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


def test_encode_command_appends_percent() -> None:
    assert encode_command("name") == b"name%"
    assert encode_command("") == b"%"  # the resync probe


@pytest.mark.parametrize("bad", ["na%me", "name\r\n", "name\n", "tab\x7f", "caf\u00e9", "\x00"])
def test_encode_command_refuses_percent_and_non_printable(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_command(bad)


@pytest.mark.parametrize("silent", ["names", "name ", "dut ", "lsx", "playlist"])
def test_encode_command_refuses_commands_the_board_never_answers(silent: str) -> None:
    with pytest.raises(LocalProtocolError, match="no reply"):
        encode_command(silent)


def test_encode_passthrough() -> None:
    assert encode_passthrough("db load 490") == b"dut db load 490%"
    assert encode_passthrough("x" * DUT_CMD_MAX) == b"dut " + b"x" * 80 + b"%"


def test_encode_passthrough_refuses_over_80_chars_naming_the_length() -> None:
    with pytest.raises(LocalProtocolError, match=r"81 characters.*at most 80"):
        encode_passthrough("x" * 81)
    # The sww DUT takes 1028.
    assert encode_passthrough("x" * 81, SWW_DUT_CMD_MAX).endswith(b"%")
    with pytest.raises(LocalProtocolError, match="1029"):
        encode_passthrough("x" * 1029, SWW_DUT_CMD_MAX)


@pytest.mark.parametrize("bad", ["", "db%", "name\r\n"])
def test_encode_passthrough_refuses_empty_and_bad_characters(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_passthrough(bad)


# --------------------------------------------------------------------------------------------
# matching rules (docs/protocols.md#interface-commands)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("name", CommandMatch("name")),
        ("name x", CommandMatch("name", "x")),
        ("names", CommandMatch("name", silent=True)),
        ("name ", CommandMatch("name", silent=True)),
        ("name\r\n", CommandMatch("name", silent=True)),
        ("dut ", CommandMatch("dut", silent=True)),
        ("dut  name", CommandMatch("dut", " name")),
        ("dut infer 1 0", CommandMatch("dut", "infer 1 0")),
        ("print_dutycycle", CommandMatch("print_dutycycle")),
        ("print_detections", CommandMatch("print_detections")),
        ("help", CommandMatch(None)),
        ("timestamp", CommandMatch(None)),
        ("", CommandMatch(None)),
        ("\r\nname", CommandMatch(None)),
    ],
)
def test_match_command(command: str, expected: CommandMatch) -> None:
    assert match_command(command) == expected


@pytest.mark.parametrize(
    ("stored", "baud"),
    [
        (0, 9600),
        (0xFFFFFFFF, 9600),
        (2_000_001, 9600),
        (2_000_000, 2_000_000),
        (115200, 115200),
        (9600, 9600),
        (1, 1),
        (-1, 9600),
    ],
)
def test_effective_baud(stored: int, baud: int) -> None:
    assert effective_baud(stored) == baud


# --------------------------------------------------------------------------------------------
# line classification
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (
            b"tinyML Enhanced Interface Board",
            BoardName(b"tinyML Enhanced Interface Board", "tinyML Enhanced Interface Board"),
        ),
        (
            b"m-dut-passthrough(db load 490)",
            PassthroughAck(b"m-dut-passthrough(db load 490)", "db load 490"),
        ),
        (b"m-dut-passthrough(f(x))", PassthroughAck(b"m-dut-passthrough(f(x))", "f(x)")),
        (b"m-ready", Ready(b"m-ready", "")),
        (b"123, 456, m-ready", Ready(b"123, 456, m-ready", "123, 456, ")),
        (b"[dut]: m-ready", DutLine(b"[dut]: m-ready", b"m-ready")),
        (
            b"[dut]: m-[Expecting 490 bytes]",
            DutLine(b"[dut]: m-[Expecting 490 bytes]", b"m-[Expecting 490 bytes]"),
        ),
        (b"[dut]: ", DutLine(b"[dut]: ", b"")),
        (b"set baud to: 115200", BaudSet(b"set baud to: 115200", 115200)),
        (b"baud is: 9600", BaudIs(b"baud is: 9600", 9600)),
        (b"baud is: fast", Unknown(b"baud is: fast")),
        (b"Detection Timestamps (ms)", Unknown(b"Detection Timestamps (ms)")),
        (b"\xff\xfe", Unknown(b"\xff\xfe")),
    ],
)
def test_classify_line(line: bytes, event: object) -> None:
    assert classify_line(line) == event


# --------------------------------------------------------------------------------------------
# firmware (device side)
# --------------------------------------------------------------------------------------------


def test_firmware_name() -> None:
    assert InterfaceFirmware().feed(b"name%") == [
        Write(b"tinyML Enhanced Interface Board\r\nm-ready\r\n")
    ]


@pytest.mark.parametrize("silent", [b"names%", b"name %", b"dut %", b"name\r\n%", b"lsx%"])
def test_firmware_silent_non_matches_send_nothing(silent: bytes) -> None:
    fw = InterfaceFirmware()
    assert fw.feed(silent) == []
    # The board is not stuck: the next command is answered.
    assert written(fw.feed(b"name%")).startswith(b"tinyML")


@pytest.mark.parametrize("command", [b"help%", b"timestamp%", b"version%", b"%", b"\r\nname%"])
def test_firmware_unknown_commands_reply_m_ready_only(command: bytes) -> None:
    assert InterfaceFirmware().feed(command) == [Write(READY)]


def test_firmware_collects_until_percent_without_length_limit() -> None:
    fw = InterfaceFirmware()
    assert fw.feed(b"x" * 5000) == []
    assert fw.feed(b"%") == [Write(READY)]
    # One byte at a time works the same.
    out = [a for b in b"name%" for a in fw.feed(bytes([b]))]
    assert written(out) == b"tinyML Enhanced Interface Board\r\nm-ready\r\n"


def test_firmware_passthrough_acks_then_relays() -> None:
    fw = InterfaceFirmware()
    assert fw.feed(b"dut db load 490%") == [
        Write(b"m-dut-passthrough(db load 490)\r\nm-ready\r\n"),
        Passthrough("db load 490"),
    ]
    assert fw.busy


def test_firmware_queues_commands_while_a_passthrough_runs() -> None:
    fw = InterfaceFirmware()
    actions = fw.feed(b"dut name%name%")
    assert actions[-1] == Passthrough("name")
    assert b"tinyML" not in written(actions)
    assert fw.passthrough_done() == [Write(b"tinyML Enhanced Interface Board\r\nm-ready\r\n")]


def test_firmware_passthrough_without_sd_card_hangs_after_the_ack() -> None:
    fw = InterfaceFirmware(sd_card=False)
    actions = fw.feed(b"dut name%")
    assert written(actions) == b"m-dut-passthrough(name)\r\nm-ready\r\n"
    assert isinstance(actions[-1], Hang)
    assert fw.feed(b"name%") == []


def test_firmware_setbaud_writes_lf_only_line_then_resets() -> None:
    fw = InterfaceFirmware()
    actions = fw.feed(b"setbaud 115200%name%")
    assert actions == [Write(b"set baud to: 115200\nm-ready\r\n"), SetBaud(115200, 115200)]
    assert fw.halted
    assert fw.feed(b"name%") == []


@pytest.mark.parametrize(
    ("arg", "baud", "stored"),
    [
        (b"3000000", 9600, 3_000_000),
        (b"-1", 9600, 0xFFFFFFFF),
        (b"0", 9600, 0),
        (b"9600abc", 9600, 9600),
        (b" 57600", 57600, 57600),
    ],
)
def test_firmware_setbaud_stoi_and_fallback(arg: bytes, baud: int, stored: int) -> None:
    actions = InterfaceFirmware().feed(b"setbaud " + arg + b"%")
    assert actions[-1] == SetBaud(baud, stored)
    # After the reset the new firmware reports the effective baud.
    after = InterfaceFirmware(stored_baud=stored)
    assert written(after.feed(b"checkbaud%")) == f"baud is: {baud}\n".encode() + READY


@pytest.mark.parametrize("arg", [b"fast", b"99999999999"])
def test_firmware_setbaud_non_numeric_hangs_silently(arg: bytes) -> None:
    fw = InterfaceFirmware()
    actions = fw.feed(b"setbaud " + arg + b"%")
    assert len(actions) == 1
    assert isinstance(actions[0], Hang)
    assert fw.feed(b"name%") == []


def test_firmware_checkbaud_default() -> None:
    assert InterfaceFirmware().feed(b"checkbaud%") == [Write(b"baud is: 9600\nm-ready\r\n")]


def test_firmware_ls() -> None:
    fw = InterfaceFirmware(files=["a.wav", "music/"])
    assert fw.feed(b"ls%") == [Write(b"a.wav\r\nmusic/\r\nm-ready\r\n")]
    assert isinstance(InterfaceFirmware(sd_card=False).feed(b"ls%")[0], Hang)


def test_firmware_play() -> None:
    fw = InterfaceFirmware(files=["a.wav"])
    assert fw.feed(b"play a.wav%") == [
        Write(b"Attempting to play a.wav\n"),
        Play("a.wav"),
        Write(b"succeeded.\nm-ready\r\n"),
    ]
    assert fw.feed(b"play b.wav%") == [
        Write(b"Attempting to play b.wav\n" + PLAY_ERROR.encode() + b"\nm-ready\r\n")
    ]
    assert fw.feed(b"play%") == [Play(None), Write(READY)]


def test_firmware_detections() -> None:
    fw = InterfaceFirmware()
    assert fw.feed(b"record_detections%") == [
        ZeroTimer(),
        Write(b"Now recording detections\r\nm-ready\r\n"),
    ]
    assert fw.add_detection(150_000)  # 1500 ms
    assert not fw.add_detection(150_900)  # 9 ms later: debounced
    assert fw.add_detection(151_000)  # 10 ms later
    assert fw.feed(b"print_detections%") == [
        Write(b"Detection Timestamps (ms)\r\n1500,\r\n1510,\r\nm-ready\r\n")
    ]
    fw.feed(b"record_detections%")
    assert written(fw.feed(b"print_detections%")) == b"Detection Timestamps (ms)\r\nm-ready\r\n"


def test_firmware_detection_and_duty_caps() -> None:
    fw = InterfaceFirmware()
    assert all(fw.add_detection(i * 2000) for i in range(10_000))
    assert not fw.add_detection(10_000 * 2000)
    assert all(fw.add_duty_edge(True, i) for i in range(100))
    assert not fw.add_duty_edge(True, 100)
    assert fw.add_duty_edge(False, 5)


def test_firmware_print_dutycycle_last_line_runs_into_m_ready() -> None:
    fw = InterfaceFirmware()
    for t in range(1, 10):
        fw.add_duty_edge(True, t)
    fw.add_duty_edge(False, 123)
    fw.add_duty_edge(False, 456)
    assert written(fw.feed(b"print_dutycycle%")) == (
        b"Duty cycle start times (s)\r\n"
        b"1, 2, 3, 4, 5, 6, 7, 8, \r\n9, \r\n"
        b"Duty cycle stop times (s)\r\n"
        b"123, 456, m-ready\r\n"
    )


def test_host_reads_print_dutycycle_quirk() -> None:
    board = FakeBoard({})
    for t in (10, 20):
        board.fw.add_duty_edge(True, t)
    board.fw.add_duty_edge(False, 123)
    board.fw.add_duty_edge(False, 456)
    host = InterfaceHost()
    host.feed(board.host_write(host.send("print_dutycycle")))
    (reply,) = host.take_replies()
    assert reply.events[-1] == Ready(b"123, 456, m-ready", "123, 456, ")
    assert host.state is InterfaceState.IDLE


def test_host_reads_empty_dutycycle_with_bare_ready() -> None:
    board, host = FakeBoard({}), InterfaceHost()
    host.feed(board.host_write(host.send("print_dutycycle")))
    (reply,) = host.take_replies()
    assert reply.events[-1] == Ready(b"m-ready", "")


# --------------------------------------------------------------------------------------------
# passthrough forwarder (docs/protocols.md#interface-passthrough)
# --------------------------------------------------------------------------------------------


def test_forwarder_prefixes_each_crlf_line_and_stops_at_exact_m_ready() -> None:
    fwd = PassthroughForwarder()
    assert fwd.start() == []
    assert fwd.feed(b"m-[Expecting 490 bytes]\r\nm-re") == [
        Write(b"[dut]: m-[Expecting 490 bytes]\r\n")
    ]
    assert fwd.feed(b"ady\r\n") == [Write(b"[dut]: m-ready\r\n"), PassthroughDone()]
    assert not fwd.active


def test_forwarder_bare_lf_merges_lines_and_wedges() -> None:
    fwd = PassthroughForwarder()
    fwd.start()
    out = fwd.feed(b"Supplied buffer size 99999 exceeds maximum of 27648\nm-ready\r\n")
    assert out == [
        Write(b"[dut]: Supplied buffer size 99999 exceeds maximum of 27648\nm-ready\r\n")
    ]
    assert fwd.active  # still waiting: the wedge
    # Only a later exact m-ready line releases it.
    assert fwd.feed(b"m-ready\r\n")[-1] == PassthroughDone()


def test_forwarder_keeps_bytes_after_done_for_the_next_passthrough() -> None:
    fwd = PassthroughForwarder()
    # Boot banner arrives while nobody is forwarding: it stays queued.
    assert fwd.feed(b"m-timestamp-mode-energy\r\nm-init-done\r\nm-ready\r\n") == []
    first = fwd.start()
    assert written(first) == (
        b"[dut]: m-timestamp-mode-energy\r\n[dut]: m-init-done\r\n[dut]: m-ready\r\n"
    )
    assert first[-1] == PassthroughDone()
    # The DUT's real answer to the first command becomes the next command's reply.
    assert fwd.feed(b"m-name-dut-[unspecified]\r\nm-ready\r\nm-profile") == []
    second = fwd.start()
    assert written(second) == b"[dut]: m-name-dut-[unspecified]\r\n[dut]: m-ready\r\n"
    assert fwd.pending == b"m-profile"


def test_forwarder_lf_only_does_not_end_a_line_and_cr_alone_neither() -> None:
    fwd = PassthroughForwarder()
    fwd.start()
    assert fwd.feed(b"a\nb\rc") == []
    assert fwd.feed(b"\r\n") == [Write(b"[dut]: a\nb\rc\r\n")]


def test_forwarder_clear() -> None:
    fwd = PassthroughForwarder()
    fwd.feed(b"junk")
    fwd.start()
    assert fwd.clear() == 4
    assert not fwd.active
    assert fwd.pending == b""


# --------------------------------------------------------------------------------------------
# host state machine
# --------------------------------------------------------------------------------------------

# The example exchange of docs/protocols.md#interface-passthrough, as bytes on the wire (CRLF
# restored).
EXAMPLE = [
    ("name", b"tinyML Enhanced Interface Board\r\nm-ready\r\n"),
    (
        "dut db load 490",
        b"m-dut-passthrough(db load 490)\r\nm-ready\r\n"
        b"[dut]: m-[Expecting 490 bytes]\r\n[dut]: m-ready\r\n",
    ),
    (
        "dut db " + "0255" * 13,
        b"m-dut-passthrough(db " + b"0255" * 13 + b")\r\nm-ready\r\n[dut]: m-ready\r\n",
    ),
    (
        "dut infer 1",
        b"m-dut-passthrough(infer 1)\r\nm-ready\r\n"
        b"[dut]: m-warmup-start-10\r\n[dut]: m-warmup-done\r\n[dut]: m-infer-start-1\r\n"
        b"[dut]: m-lap-us-67410227\r\n[dut]: m-lap-us-67565820\r\n[dut]: m-infer-done\r\n"
        b"[dut]: m-results-[0.000,0.992]\r\n[dut]: m-ready\r\n",
    ),
]


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_host_example_exchange(chunk: int) -> None:
    host = InterfaceHost()
    replies: list[InterfaceReply] = []
    for command, wire in EXAMPLE:
        sent = host.send(command)
        assert sent == command.encode() + b"%"
        for i in range(0, len(wire), chunk):
            host.feed(wire[i : i + chunk])
        replies += host.take_replies()
        assert host.state is InterfaceState.IDLE
    name, load, chunk_reply, infer = replies
    assert name.command == "name" and not name.passthrough
    assert name.events == (
        BoardName(b"tinyML Enhanced Interface Board", "tinyML Enhanced Interface Board"),
        Ready(b"m-ready", ""),
    )
    assert load.dut_command == "db load 490"
    assert load.dut_lines == (b"m-[Expecting 490 bytes]", b"m-ready")
    assert isinstance(load.events[0], PassthroughAck)
    assert chunk_reply.dut_lines == (b"m-ready",)
    assert infer.dut_lines == (
        b"m-warmup-start-10",
        b"m-warmup-done",
        b"m-infer-start-1",
        b"m-lap-us-67410227",
        b"m-lap-us-67565820",
        b"m-infer-done",
        b"m-results-[0.000,0.992]",
        b"m-ready",
    )
    assert not infer.wedged


def test_host_against_firmware_and_forwarder() -> None:
    board = FakeBoard(
        {
            "name": b"m-name-dut-[unspecified]\r\nm-ready\r\n",
            "db load 490": b"m-[Expecting 490 bytes]\r\nm-ready\r\n",
        }
    )
    host = InterfaceHost()
    host.feed(board.host_write(host.send("name")))
    host.feed(board.host_write(host.send_passthrough("name")))
    host.feed(board.host_write(host.send("dut db load 490")))  # send() routes dut to passthrough
    host.feed(board.host_write(host.send("checkbaud")))
    name, dut_name, load, baud = host.take_replies()
    assert name.events[0] == BoardName(
        b"tinyML Enhanced Interface Board", "tinyML Enhanced Interface Board"
    )
    assert dut_name.dut_lines == (b"m-name-dut-[unspecified]", b"m-ready")
    assert load.dut_lines == (b"m-[Expecting 490 bytes]", b"m-ready")
    assert baud.events[0] == BaudIs(b"baud is: 9600", 9600)
    assert board.to_dut == [b"name%", b"db load 490%"]


def test_host_setbaud_reply() -> None:
    board, host = FakeBoard({}), InterfaceHost()
    host.feed(board.host_write(host.send("setbaud 115200")))
    (reply,) = host.take_replies()
    assert reply.events == (BaudSet(b"set baud to: 115200", 115200), Ready(b"m-ready", ""))


def test_host_refuses_second_command_while_outstanding() -> None:
    host = InterfaceHost()
    host.send("name")
    with pytest.raises(LocalProtocolError, match="outstanding"):
        host.send("name")
    with pytest.raises(LocalProtocolError):
        host.send_passthrough("name")
    host.feed(b"tinyML Enhanced Interface Board\r\n")
    assert host.take_replies() == []  # not complete before m-ready
    host.feed(b"m-ready\r\n")
    assert len(host.take_replies()) == 1
    host.send("name")  # allowed again


def test_host_refuses_bare_dut_and_over_long_passthrough() -> None:
    host = InterfaceHost()
    with pytest.raises(LocalProtocolError):
        host.send("dut")
    with pytest.raises(LocalProtocolError, match="81"):
        host.send("dut " + "x" * 81)
    assert host.state is InterfaceState.IDLE


def test_host_wedge_on_merged_m_ready() -> None:
    board = FakeBoard(
        {
            "db load 99999": b"Supplied buffer size 99999 exceeds maximum of 27648\nm-ready\r\n",
        }
    )
    host = InterfaceHost()
    events = host.feed(board.host_write(host.send_passthrough("db load 99999")))
    (reply,) = host.take_replies()
    assert reply.wedged
    assert reply.dut_lines == (b"Supplied buffer size 99999 exceeds maximum of 27648", b"m-ready")
    assert events[-1] == DutLine(b"m-ready", b"m-ready", merged=True)
    assert host.wedged
    assert board.fwd.active  # the board agrees: it is still waiting
    with pytest.raises(LocalProtocolError, match="wedged"):
        host.send("name")
    # The DUT reboots (power cycle): its banner ends in an exact m-ready, releasing the board.
    out = written(board.fwd.feed(b"m-timestamp-mode-energy\r\nm-init-done\r\nm-ready\r\n"))
    events = host.feed(out)
    assert [e.payload for e in events if isinstance(e, DutLine)] == [
        b"m-timestamp-mode-energy",
        b"m-init-done",
        b"m-ready",
    ]
    assert host.state is InterfaceState.IDLE
    assert host.take_replies() == []
    host.send("name")


def test_host_ack_for_another_command_is_a_desync() -> None:
    host = InterfaceHost()
    host.send_passthrough("infer 1 0")
    with pytest.raises(InterfaceDesyncError, match="stale") as info:
        host.feed(b"m-dut-passthrough(db load 490)\r\nm-ready\r\n[dut]: m-ready\r\n")
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.line == b"m-dut-passthrough(db load 490)"
    assert len(info.value.events) == 3  # everything received is still reported
    assert host.state is InterfaceState.ERROR
    with pytest.raises(LocalProtocolError, match="reset"):
        host.send("name")
    # In ERROR state lines are still classified, never raised.
    assert host.feed(b"m-ready\r\n") == [Ready(b"m-ready", "")]
    host.reset()
    host.send("name")


@pytest.mark.parametrize(
    ("command", "wire", "match"),
    [
        ("name", b"[dut]: m-ready\r\n", "stale"),
        ("name", b"m-dut-passthrough(x)\r\n", "stale"),
        ("dut x", b"m-ready\r\n", "expected m-dut-passthrough"),
        ("dut x", b"m-dut-passthrough(x)\r\n[dut]: m-ready\r\n", "the ack's m-ready"),
        ("dut x", b"m-dut-passthrough(x)\r\nm-ready\r\nm-ready\r\n", r"\[dut\]"),
        ("name", b"tinyML \xffnhanced\r\n", "garbage"),
        ("dut x", b"m-dut-passthrough(x)\r\nm-ready\r\n[dut]: m-lap\x80\r\n", "garbage"),
    ],
)
def test_host_remote_errors(command: str, wire: bytes, match: str) -> None:
    host = InterfaceHost()
    host.send(command)
    with pytest.raises(InterfaceDesyncError, match=match):
        host.feed(wire)
    assert host.take_replies() == []


def test_host_unsolicited_lines_in_idle_are_reported_not_raised() -> None:
    host = InterfaceHost()
    events = host.feed(b"[dut]: m-ready\r\nm-ready\r\n\xff\xfe\r\n")
    assert events == [
        DutLine(b"[dut]: m-ready", b"m-ready"),
        Ready(b"m-ready", ""),
        Unknown(b"\xff\xfe"),
    ]
    assert host.take_replies() == []


def test_host_reset_drops_partial_line_and_outstanding_command() -> None:
    host = InterfaceHost()
    host.send("name")
    host.feed(b"tinyML Enh")
    host.reset()
    assert host.outstanding is None
    host.send("checkbaud")
    host.feed(b"baud is: 9600\nm-ready\r\n")
    (reply,) = host.take_replies()
    assert reply.events[0] == BaudIs(b"baud is: 9600", 9600)


# --------------------------------------------------------------------------------------------
# robustness: bytes >= 0x80 and random noise never crash
# --------------------------------------------------------------------------------------------


def test_random_bytes_never_crash() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        fw = InterfaceFirmware(files=["a.wav"])
        for action in fw.feed(noise + b"%"):
            assert isinstance(action, Write | Passthrough | SetBaud | Hang | Play | ZeroTimer)
        fwd = PassthroughForwarder()
        fwd.start()
        fwd.feed(noise + b"\r\n")
        host = InterfaceHost()
        host.feed(noise)  # idle: classification only
        host.send_passthrough("infer 1 0")
        with contextlib.suppress(RemoteProtocolError):
            host.feed(noise + b"\n")
        for b in range(256):
            classify_line(bytes([b]) + noise[:10])
