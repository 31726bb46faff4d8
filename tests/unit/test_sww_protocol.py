"""The streaming-wakeword (sww01) protocol, both sides, on exact bytes
(docs/protocols.md#streaming-wakeword): the DUT firmware's lines and their classification,
the stream's board replies (play, detections, duty cycle) read by the host."""

from __future__ import annotations

import pytest

from farm.protocol import dut, sww
from farm.protocol import sww_firmware as fw
from farm.protocol.errors import RemoteProtocolError
from farm.protocol.interface import InterfaceHost, InterfaceReply
from farm.protocol.interface_firmware import InterfaceFirmware, Write


def booted() -> fw.SwwFirmware:
    f = fw.SwwFirmware()
    f.boot()
    f.parser_enabled = True
    return f


def written(actions: list[fw.SwwAction]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, fw.Write))


def run(f: fw.SwwFirmware, data: bytes) -> bytes:
    return written(f.receive(data))


def reply_of(command: str, data: bytes) -> dut.DutReply:
    host = dut.DutHost()
    host.send(command)
    host.feed(data)
    reply = host.next_reply()
    assert reply is not None
    return reply


def board_reply(command: str, data: bytes) -> InterfaceReply:
    host = InterfaceHost()
    host.send(command)
    host.feed(data)
    (reply,) = host.take_replies()
    return reply


# --- the DUT firmware ---------------------------------------------------------------------------


def test_boot_has_no_banner_and_one_timestamp_pulse() -> None:
    f = fw.SwwFirmware()
    actions = f.boot()
    assert written(actions) == b""
    assert actions == [fw.Pulse(), fw.Compute("boot", 1), fw.EnableParser()]
    # commands completed before the parser is enabled are dropped without a word
    assert f.receive(b"name%") == []


def test_name_profile_echo_every_command() -> None:
    f = booted()
    assert run(f, b"name%") == (
        b"Received command: name\r\nm-name-dut-[unspecified]\r\nm-ready\r\n"
    )
    assert run(f, b"profile%") == (
        b"Received command: profile\r\n"
        b"m-profile-[MLPerf Tiny Firmware V0.1.0]\r\nm-model-[sww01]\r\nm-ready\r\n"
    )


def test_unknown_and_empty_commands() -> None:
    f = booted()
    # strtok has cut the buffer at the first space: only the first token is named
    assert run(f, b"frobnicate now%") == (
        b"Received command: frobnicate now\r\nUnrecognized command frobnicate\r\nm-ready\r\n"
    )
    assert run(f, b"%") == (
        b"Received command: \r\n"
        b"Empty command (only a % read).  Type 'help%' for help\r\nm-ready\r\n"
    )
    assert run(f, b"  %") == (
        b"Received command:   \r\n"
        b"Empty command (only a % read).  Type 'help%' for help\r\nm-ready\r\n"
    )


def test_commands_are_cut_to_1028_characters() -> None:
    f = booted()
    out = run(f, b"x" * 1500 + b"%")
    assert (
        out
        == (b"Received command: " + b"x" * 1028 + b"\r\nUnrecognized command " + b"x" * 1028)
        + b"\r\nm-ready\r\n"
    )


def test_start_arms_the_stream_and_pulses_both_pins() -> None:
    f = booted()
    actions = f.receive(b"start%")
    assert written(actions) == (
        b"Received command: start\r\nListening for I2S data ... \r\n"
        b"DMA receive initiated.\r\nm-ready\r\n"
    )
    others = [a for a in actions if not isinstance(a, fw.Write)]
    assert others == [
        fw.Pulse(),
        fw.ProcessingPin(False),
        fw.ProcessingPin(True),
        fw.ProcessingPin(False),
        fw.StartStream(),
    ]
    assert f.streaming
    assert run(f, b"start%") == (
        b"Received command: start\r\nI2S Rx currently in progress. Ignoring request\r\nm-ready\r\n"
    )


def test_frames_pulse_on_the_first_frame_and_above_the_threshold() -> None:
    f = booted()
    assert f.frame(127) == []  # not streaming: the DMA is not armed
    f.receive(b"start%")
    first = f.frame(0)
    assert first == [
        fw.ProcessingPin(True),
        fw.FrameCompute(),
        fw.WakewordPulse(),  # the sync marker, whatever the activation
        fw.ProcessingPin(False),
    ]
    assert fw.WakewordPulse() not in f.frame(115)  # not above the threshold
    assert fw.WakewordPulse() in f.frame(116)
    assert f.activations == [0, 115, 116]


def test_stop_dumps_the_activations_16_a_row() -> None:
    f = booted()
    f.receive(b"start%")
    for v in range(-3, 15):  # 18 frames
        f.frame(v)
    actions = f.receive(b"stop%")
    assert [a for a in actions if not isinstance(a, fw.Write)] == [fw.StopStream(), fw.Pulse()]
    assert written(actions) == (
        b"Received command: stop\r\nStreaming stopped.\r\ntarget activations: \r\n"
        b"[-3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, \r\n"
        b"13, 14  \r\n"
        b"]\r\n"
        b"m-ready\r\n"
    )
    assert run(f, b"stop%") == (
        b"Received command: stop\r\nI2S is already idle.  Ignoring stop request\r\nm-ready\r\n"
    )


def test_stop_with_no_frames_prints_an_empty_list() -> None:
    f = booted()
    f.receive(b"start%")
    assert run(f, b"stop%").endswith(b"target activations: \r\n[]\r\nm-ready\r\n")


def test_db_subcommands() -> None:
    f = booted()
    assert run(f, b"db 00%") == (
        b"Received command: db 00\r\n"
        b"Error: Must issue db load <Nbytes> command before transmitting data.\r\nm-ready\r\n"
    )
    assert run(f, b"db load 3%") == (
        b"Received command: db load 3\r\nExpecting 3 bytes\r\nm-ready\r\n"
    )
    assert run(f, b"db 0a0%") == (
        b"Received command: db 0a0\r\n"
        b"Error: number of hex digits in data string must be even. Received 3\r\n"
        b"Still waiting for data\r\nm-ready\r\n"
    )
    assert run(f, b"db 0aff%") == b"Received command: db 0aff\r\n2 bytes received\r\nm-ready\r\n"
    assert run(f, b"db getptr%") == b"Received command: db getptr\r\nm-buff-ptr-2\r\nm-ready\r\n"
    assert run(f, b"db 10%") == b"Received command: db 10\r\nm-load-done\r\nm-ready\r\n"
    assert run(f, b"db print 4%") == (
        b"Received command: db print 4\r\nm-buffer-0a-ff-10-00\r\nm-ready\r\n"
    )
    assert run(f, b"db load x%") == (
        b"Received command: db load x\r\n"
        b"Error: Transfer size (x) must be valid int; greater than 0.\r\n"
        b"Usage: 'db load N'; N>0\r\nm-ready\r\n"
    )
    assert run(f, b"db nope%") == (
        b"Received command: db nope\r\nError: db: Unrecognized sub-command nope\r\nm-ready\r\n"
    )


# --- host-side classification ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"Received command: stop", dut.Echo(b"Received command: stop", "stop")),
        (b"Listening for I2S data ... ", dut.StreamListening(b"Listening for I2S data ... ")),
        (b"DMA receive initiated.", dut.StreamStarted(b"DMA receive initiated.")),
        (b"Streaming stopped.", dut.StreamStopped(b"Streaming stopped.")),
        (b"target activations: ", dut.ActivationsHeader(b"target activations: ")),
        (b"[1, -2, ", dut.ActivationRow(b"[1, -2, ", (1, -2))),
        (b"7  ", dut.ActivationRow(b"7  ", (7,))),
        (b"]", dut.ActivationsEnd(b"]")),
        (b"[]", dut.ActivationsEnd(b"[]")),
        (b"Expecting 3 bytes", dut.Expecting(b"Expecting 3 bytes", 3)),
        (b"12 bytes received", dut.BytesReceived(b"12 bytes received", 12)),
        (b"m-buff-ptr-7", dut.BufferPointer(b"m-buff-ptr-7", 7)),
        (b"Error: db: boom", dut.DeviceError(b"Error: db: boom", "db: boom")),
        (b"Unrecognized command zap", dut.Unrecognized(b"Unrecognized command zap", "zap")),
    ],
)
def test_sww_lines_are_classified(line: bytes, event: dut.DutEvent) -> None:
    assert dut.classify_line(line) == event


def test_unrecognized_is_an_error_and_name_still_parses() -> None:
    reply = reply_of("zap", b"Received command: zap\r\nUnrecognized command zap\r\nm-ready\r\n")
    assert [type(e) for e in reply.errors] == [dut.Unrecognized]
    reply = reply_of("name", b"Received command: name\r\nm-name-dut-[acme]\r\nm-ready\r\n")
    assert reply.errors == [] and not reply.of(dut.Unknown)
    assert reply.of(dut.Name)[0].vendor == "acme"


def test_stream_replies_round_trip_from_the_firmware() -> None:
    f = booted()
    assert sww.stream_started(reply_of("start", run(f, b"start%"))) is True
    assert sww.stream_started(reply_of("start", run(f, b"start%"))) is False
    values = [(i * 37) % 256 - 128 for i in range(40)]
    for v in values:
        f.frame(v)
    stop = sww.stream_stop(reply_of("stop", run(f, b"stop%")))
    assert stop == sww.StreamStop(True, tuple(values), 0)
    assert sww.stream_stop(reply_of("stop", run(f, b"stop%"))) == sww.StreamStop(False, (), 0)


def test_damaged_activation_rows_are_counted_not_fatal() -> None:
    data = (
        b"Received command: stop\r\nStreaming stopped.\r\ntarget activations: \r\n"
        b"[1, 2, 3, \r\n4, 5 6, \r\n7  \r\n]\r\nm-ready\r\n"
    )
    assert sww.stream_stop(reply_of("stop", data)) == sww.StreamStop(True, (1, 2, 3, 7), 1)
    with pytest.raises(RemoteProtocolError, match="no stop line"):
        sww.stream_stop(reply_of("stop", b"Received command: stop\r\nm-ready\r\n"))


# --- the interface board's replies --------------------------------------------------------------


def test_detections_from_the_board() -> None:
    board = InterfaceFirmware()
    board.feed(b"record_detections%")
    for ticks in (1_234, 350_000, 700_100):
        assert board.add_detection(ticks)
    (action,) = board.feed(b"print_detections%")
    assert isinstance(action, Write)
    assert action.data == b"Detection Timestamps (ms)\r\n12,\r\n3500,\r\n7001,\r\nm-ready\r\n"
    assert sww.detections(board_reply("print_detections", action.data)) == (12, 3500, 7001)
    empty = b"Detection Timestamps (ms)\r\nm-ready\r\n"
    assert sww.detections(board_reply("print_detections", empty)) == ()
    with pytest.raises(RemoteProtocolError, match="not a timestamp line"):
        bad = b"Detection Timestamps (ms)\r\n1\r\nm-ready\r\n"
        sww.detections(board_reply("print_detections", bad))


def test_dutycycle_with_row_breaks_and_values_on_the_ready_line() -> None:
    board = InterfaceFirmware()
    starts = [100 + 3200 * i for i in range(10)]
    stops = [s + 1795 for s in starts[:9]]
    for s in starts:
        board.add_duty_edge(True, s)
    for s in stops:
        board.add_duty_edge(False, s)
    (action,) = board.feed(b"print_dutycycle%")
    assert isinstance(action, Write)
    assert action.data == (
        b"Duty cycle start times (s)\r\n"
        b"100, 3300, 6500, 9700, 12900, 16100, 19300, 22500, \r\n"
        b"25700, 28900, \r\n"
        b"Duty cycle stop times (s)\r\n"
        b"1895, 5095, 8295, 11495, 14695, 17895, 21095, 24295, \r\n"
        b"27495, m-ready\r\n"
    )
    parsed = sww.dutycycle(board_reply("print_dutycycle", action.data))
    assert parsed == (tuple(starts), tuple(stops))


def test_dutycycle_empty_and_malformed() -> None:
    empty = b"Duty cycle start times (s)\r\n\r\nDuty cycle stop times (s)\r\nm-ready\r\n"
    assert sww.dutycycle(board_reply("print_dutycycle", empty)) == ((), ())
    with pytest.raises(RemoteProtocolError, match="no 'Duty cycle stop times"):
        short = b"Duty cycle start times (s)\r\n1, m-ready\r\n"
        sww.dutycycle(board_reply("print_dutycycle", short))
    with pytest.raises(RemoteProtocolError, match="not a list of ticks"):
        bad = b"Duty cycle start times (s)\r\n1,2\r\nDuty cycle stop times (s)\r\nm-ready\r\n"
        sww.dutycycle(board_reply("print_dutycycle", bad))


def test_play_outcome() -> None:
    ok = b"Attempting to play long_wav.wav\nsucceeded.\nm-ready\r\n"
    assert sww.play_succeeded(board_reply("play long_wav.wav", ok), "long_wav.wav") is True
    missing = (
        b"Attempting to play x.wav\nError playing file. Check that the file exists and is a "
        b"2-channel wav file.\nm-ready\r\n"
    )
    assert sww.play_succeeded(board_reply("play x.wav", missing), "x.wav") is False
    with pytest.raises(RemoteProtocolError, match=r"expected 'Attempting to play y\.wav'"):
        sww.play_succeeded(board_reply("play x.wav", missing), "y.wav")


def test_frame_timing_constants() -> None:
    assert sww.FRAME_S == 0.032
    assert sww.FRAME_BYTES == 2048
