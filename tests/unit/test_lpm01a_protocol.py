"""Unit tests of farm.protocol.lpm01a and lpm01a_firmware against the PowerShield's strings."""

from __future__ import annotations

import contextlib
import math
import random
import re

import pytest

from farm.protocol.errors import LocalProtocolError, RemoteProtocolError
from farm.protocol.lpm01a import (
    ACQUISITION_COMPLETED_LINE,
    PROMPT,
    START,
    Ack,
    AcquisitionCompleted,
    EdgeEvent,
    EnergyCapture,
    Error,
    ErrorDetail,
    Lpm01aHost,
    Lpm01aReply,
    Lpm01aState,
    Malformed,
    Samples,
    TimeStamp,
    Unknown,
    classify_line,
    encode_command,
    parse_number,
    power_on_commands,
    setup_commands,
    teardown_commands,
)
from farm.protocol.lpm01a_firmware import (
    Lpm01aFirmware,
    PowerSwitch,
    Reset,
    StartAcquisition,
    StopAcquisition,
    TargetReset,
    Write,
    format_event,
    format_sample,
    format_timestamp,
)


def written(actions: list) -> bytes:
    """Every host-bound byte in an action list."""
    return b"".join(a.data for a in actions if isinstance(a, Write))


def exchange(host: Lpm01aHost, fw: Lpm01aFirmware, command: str) -> Lpm01aReply:
    """Send one command through the firmware and return the host's completed reply."""
    actions = fw.feed(host.send(command))
    host.feed(written(actions))
    if any(isinstance(a, StopAcquisition) for a in actions):
        host.feed(ACQUISITION_COMPLETED_LINE)
    (reply,) = host.take_replies()
    return reply


def controlled() -> tuple[Lpm01aHost, Lpm01aFirmware]:
    host, fw = Lpm01aHost(), Lpm01aFirmware()
    assert exchange(host, fw, "htc").ok
    return host, fw


# --------------------------------------------------------------------------------------------
# encoding and sequences
# --------------------------------------------------------------------------------------------


def test_encode_command() -> None:
    assert encode_command("htc") == b"htc\r\n"
    assert encode_command('lcd 1 "MLPerf Tiny"') == b'lcd 1 "MLPerf Tiny"\r\n'


@pytest.mark.parametrize("bad", ["", "htc\r\n", "a\nb", "a\rb", "volt\x00", "caf\u00e9"])
def test_encode_command_refuses(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_command(bad)


def test_setup_commands_match_the_runner() -> None:
    assert setup_commands(1800) == [
        "htc",
        'lcd 1 "MLPerf Tiny"',
        'lcd 2 "     monitor    "',
        "pwr off",
        "acqtime inf",
        "trigdelay 0",
        "trigsrc sw",
        "eventsrc d7 fal",
        "output energy",
        "format ascii_dec",
        "freq 1k",
        "volt 1800m",
    ]
    assert setup_commands(3300)[-1] == "volt 3300m"
    with pytest.raises(LocalProtocolError):
        setup_commands(1700)


def test_power_on_and_teardown_commands() -> None:
    assert power_on_commands(1800) == ['lcd 2 "           1.8V "', "pwr on nostatus"]
    assert power_on_commands(3300)[0] == 'lcd 2 "           3.3V "'
    assert START == "start"
    assert teardown_commands() == ["pwr off", "stop", "pwr off", "hrc"]


def test_whole_runner_session_against_firmware() -> None:
    host, fw = Lpm01aHost(), Lpm01aFirmware()
    for command in setup_commands(1800):
        assert exchange(host, fw, command).ok, command
    assert (fw.voltage_mv, fw.freq_hz, fw.output, fw.eventsrc) == (
        1800,
        1000,
        "energy",
        ("d7", "fal"),
    )
    assert not fw.powered
    for command in power_on_commands(1800):
        assert exchange(host, fw, command).ok
    assert fw.powered
    assert fw.lcd[1] == "           1.8V "
    actions = fw.feed(host.send(START))
    assert StartAcquisition(1000) in actions
    host.feed(written(actions))
    assert host.take_replies()[0].ok
    for command in teardown_commands():
        assert exchange(host, fw, command).ok, command
    assert not fw.host_control and not fw.running and not fw.powered


# --------------------------------------------------------------------------------------------
# line classification
# --------------------------------------------------------------------------------------------


def test_classify_ack_error_detail() -> None:
    assert classify_line(b"PowerShield > ack htc") == Ack(b"PowerShield > ack htc", "htc", None)
    assert classify_line(b"ack volt get 3292-03", "volt get") == Ack(
        b"ack volt get 3292-03", "volt get", "3292-03"
    )
    # Without the outstanding command the echo and value cannot be told apart.
    assert classify_line(b"ack volt get 3292-03") == Ack(
        b"ack volt get 3292-03", "volt get 3292-03", None
    )
    assert classify_line(b"PowerShield > ack temp degc 28.0", "temp degc").value == "28.0"
    assert classify_line(b"PowerShield > error pwr off", "pwr off") == Error(
        b"PowerShield > error pwr off", "pwr off"
    )
    assert classify_line(b"PowerShield > Error detail: bad arg") == ErrorDetail(
        b"PowerShield > Error detail: bad arg", "bad arg"
    )
    assert classify_line(b"PowerShield > Acquisition completed") == AcquisitionCompleted(
        b"PowerShield > Acquisition completed"
    )
    assert classify_line(b"PowerShield > ") == Unknown(b"PowerShield > ")
    assert classify_line(b"summary begin") == Unknown(b"summary begin")


def test_ack_of_a_command_that_is_a_prefix_is_not_confused() -> None:
    # 'pwr on' outstanding, ack of 'pwr on' with no value vs 'pwr' outstanding.
    assert classify_line(b"ack pwr on", "pwr on").value is None
    assert classify_line(b"ack pwr onx", "pwr on") == Ack(b"ack pwr onx", "pwr onx", None)


@pytest.mark.parametrize(
    ("line", "values"),
    [
        (b"6409-07", (640.9e-6,)),
        (b"1234-08", (1.234e-5,)),
        (b"0000+00", (0.0,)),
        (b"9999+03", (9.999e6,)),
        (b"1234-081234-08", (1.234e-5, 1.234e-5)),
    ],
)
def test_samples(line: bytes, values: tuple[float, ...]) -> None:
    event = classify_line(line)
    assert isinstance(event, Samples)
    assert event.values == pytest.approx(values, rel=1e-12)
    assert not event.junk and not event.wide
    # Values go through the decimal text, exactly like the runner's float('6409e-07').
    assert classify_line(b"6409-07").values == (float("6409e-07"),)


@pytest.mark.parametrize(
    ("line", "n_values"),
    [(b"1234-08xyz", 2), (b"1234-0812", 2), (b"1234-08 5678-09 ", 3), (b"1234-08\xff", 2)],
)
def test_samples_with_trailing_junk_add_nan(line: bytes, n_values: int) -> None:
    event = classify_line(line)
    assert isinstance(event, Samples)
    assert event.junk
    assert len(event.values) == n_values
    assert math.isnan(event.values[-1])
    assert event.values[0] == pytest.approx(1.234e-5)


def test_five_digit_mantissa_is_accepted_and_flagged() -> None:
    event = classify_line(b"33930-08")
    assert event == Samples(b"33930-08", (float("33930e-08"),), wide=True)


@pytest.mark.parametrize("line", [b"123-08", b"12345", b"abcd-08", b"-1234-08"])
def test_non_samples(line: bytes) -> None:
    assert not isinstance(classify_line(line), Samples)


def test_timestamp_valid() -> None:
    ts = classify_line(b"TimeStamp: 012s 345ms, buff 07%")
    assert ts == TimeStamp(b"TimeStamp: 012s 345ms, buff 07%", 12, 345, 7)
    assert ts.ms == 12_345
    assert classify_line(b"TimeStamp:>999s 000ms, buff 99%").mark == ">"
    assert classify_line(b"TimeStamp:<000s 001ms, buff 00%").millis == 1


@pytest.mark.parametrize(
    "line",
    [
        b"TimeStamp: 12s 345ms, buff 07%",
        b"TimeStamp: 012s 345ms, buff 7%",
        b"TimeStamp: 0012s 345ms, buff 07%",
        b"TimeStamp:012s 345ms, buff 07%",
        b"TimeStamp: 012s 345 ms, buff 07%",
        b"TimeStamp",
        b"TimeStamp: \xff12s",
    ],
)
def test_timestamp_strictness_reports_malformed(line: bytes) -> None:
    event = classify_line(line)
    assert isinstance(event, Malformed)
    assert "TimeStamp" in event.reason


def test_timestamp_followed_by_nul_frames_cleanly() -> None:
    host = Lpm01aHost()
    events = host.feed(b"TimeStamp: 001s 000ms, buff 00%\r\n\x001234-08\r\n")
    assert [type(e) for e in events] == [TimeStamp, Samples]


def test_events() -> None:
    assert classify_line(b"event 0 ris") == EdgeEvent(b"event 0 ris", 0, "ris")
    assert classify_line(b"event 12 ris").number == 12
    assert classify_line(b"event 3 fal") == EdgeEvent(b"event 3 fal", 3, "fal")
    assert isinstance(classify_line(b"event x ris"), Unknown)


def test_non_ascii_message_is_malformed() -> None:
    assert isinstance(classify_line(b"PowerShield > ack h\xe9c"), Malformed)


# --------------------------------------------------------------------------------------------
# host state machine
# --------------------------------------------------------------------------------------------


def test_host_ack_round_trip_with_value() -> None:
    host, fw = controlled()
    exchange(host, fw, "volt 1800m")
    reply = exchange(host, fw, "volt get")
    assert reply.ok and reply.value == "1800-03"
    assert reply.events == (Ack(b"PowerShield > ack volt get 1800-03", "volt get", "1800-03"),)


def test_host_error_with_detail_round_trip() -> None:
    host, fw = controlled()
    reply = exchange(host, fw, "volt 3301m")
    assert not reply.ok
    assert reply.error_detail is not None and "out of range" in reply.error_detail
    assert [type(e) for e in reply.events] == [Error, ErrorDetail]


def test_host_error_without_detail_line() -> None:
    fw = Lpm01aFirmware(error_detail=False)
    host = Lpm01aHost()
    host.feed(written(fw.feed(host.send("volt 1800m"))))  # no htc: error
    assert host.state is Lpm01aState.AWAIT_DETAIL
    assert host.take_replies() == []
    # Data lines do not end the wait ...
    host.feed(b"1234-08\r\n")
    assert host.take_replies() == []
    # ... a timeout (flush) does.
    host.flush()
    (reply,) = host.take_replies()
    assert (reply.ok, reply.error_detail) == (False, None)


def test_host_error_then_other_message_completes_without_detail() -> None:
    host = Lpm01aHost()
    host.send("pwr off")
    host.feed(b"PowerShield > error pwr off\r\nPowerShield > Acquisition completed\r\n")
    (reply,) = host.take_replies()
    assert reply.error_detail is None and not reply.ok


def test_host_error_then_next_send_completes_without_detail() -> None:
    host = Lpm01aHost()
    host.send("pwr off")
    host.feed(b"PowerShield > error pwr off\r\n")
    host.send("htc")
    (reply,) = host.take_replies()
    assert reply.command == "pwr off" and not reply.ok
    assert host.outstanding == "htc"


def test_host_without_error_detail_completes_at_error() -> None:
    host = Lpm01aHost(error_detail=False)
    host.send("pwr off")
    host.feed(b"PowerShield > error pwr off\r\n")
    (reply,) = host.take_replies()
    assert not reply.ok


def test_host_stop_waits_for_acquisition_completed() -> None:
    host, fw = controlled()
    for command in ("freq 1k", "start"):
        exchange(host, fw, command)
    host.feed(written(fw.feed(host.send("stop"))))
    assert host.state is Lpm01aState.AWAIT_COMPLETED
    assert host.take_replies() == []
    host.feed(b"1234-08\r\n" + ACQUISITION_COMPLETED_LINE)
    (reply,) = host.take_replies()
    assert reply.ok and isinstance(reply.events[-1], AcquisitionCompleted)


def test_host_stop_tolerates_completion_before_ack() -> None:
    host = Lpm01aHost()
    host.send("stop")
    host.feed(ACQUISITION_COMPLETED_LINE)
    assert host.take_replies() == []
    host.feed(b"PowerShield > ack stop\r\n")
    (reply,) = host.take_replies()
    assert reply.ok


def test_host_stop_rejected_when_not_running() -> None:
    host, fw = controlled()
    reply = exchange(host, fw, "stop")
    assert not reply.ok and reply.error_detail == "no acquisition in progress"


def test_host_data_lines_pass_through_while_a_command_is_outstanding() -> None:
    host = Lpm01aHost()
    host.send("pwr off")
    events = host.feed(
        b"1234-08\r\nevent 0 ris\r\nTimeStamp: 001s 000ms, buff 01%\r\n"
        b"PowerShield > ack pwr off\r\n1235-08\r\n"
    )
    assert [type(e) for e in events] == [Samples, EdgeEvent, TimeStamp, Ack, Samples]
    (reply,) = host.take_replies()
    assert reply.ok and reply.stray == ()


def test_host_runner_stale_queue_example() -> None:
    # README: ['33930-08', '33340-08', 'ack'] made the runner think the PowerShield had not
    # acknowledged. Here the wide samples are data and the ack completes the command.
    host = Lpm01aHost()
    host.send("htc")
    events = host.feed(b"33930-08\r\n33340-08\r\nPowerShield > ack htc\r\n")
    assert [e.values for e in events[:2]] == [(float("33930e-08"),), (float("33340e-08"),)]
    assert all(e.wide for e in events[:2])
    (reply,) = host.take_replies()
    assert reply.ok and reply.stray == ()


def test_host_collects_stray_lines_and_ignores_stale_acks() -> None:
    host = Lpm01aHost()
    host.send("freq 1k")
    host.feed(
        b"PowerShield > ack htc\r\nhello\r\nPowerShield > error volt 5\r\n"
        b"PowerShield > ack freq 1k\r\n"
    )
    (reply,) = host.take_replies()
    assert reply.ok
    assert [type(e) for e in reply.stray] == [Ack, Unknown, Error]
    assert reply.stray[0].command == "htc"


def test_host_refuses_second_command_and_byte_at_a_time_works() -> None:
    host = Lpm01aHost()
    host.send("htc")
    with pytest.raises(LocalProtocolError, match="outstanding"):
        host.send("hrc")
    for b in b"PowerShield > ack htc\r\n":
        host.feed(bytes([b]))
    assert host.take_replies()[0].ok
    host.send("hrc")


def test_host_reset() -> None:
    host = Lpm01aHost()
    host.send("htc")
    host.feed(b"PowerShield > ac")
    host.reset()
    assert host.outstanding is None and host.state is Lpm01aState.IDLE
    host.send("htc")
    host.feed(b"PowerShield > ack htc\r\n")
    assert host.take_replies()[0].command == "htc"


def test_host_abandon_keeps_the_line_in_flight() -> None:
    host = Lpm01aHost()
    host.send("volt 1800m")
    host.feed(b"12")
    host.abandon()
    assert host.outstanding is None and host.state is Lpm01aState.IDLE
    events = host.feed(b"34-08\r\nPowerShield > ack volt 1800m\r\n")
    assert events[0] == Samples(b"1234-08", (1234e-08,))
    assert host.take_replies() == []  # the late ack is ignored


# --------------------------------------------------------------------------------------------
# firmware: grammar, ranges, state
# --------------------------------------------------------------------------------------------

RANGE_CASES = [
    ("volt 1800m", True),
    ("volt 3300m", True),
    ("volt 1799m", False),
    ("volt 3301m", False),
    ("volt 2", True),
    ("volt 18-1", True),
    ("volt 4", False),
    ("volt get", True),
    ("volt abc", False),
    ("volt", False),
    ("volt 1.8", False),
    *[
        (f"freq {f}", True)
        for f in (
            "100k",
            "50k",
            "20k",
            "10k",
            "5k",
            "2k",
            "1k",
            "500",
            "200",
            "100",
            "50",
            "20",
            "10",
            "5",
            "2",
            "1",
        )
    ],
    ("freq 1000", True),
    ("freq 3k", False),
    ("freq 0", False),
    ("freq 200k", False),
    ("acqtime 100u", True),
    ("acqtime 99u", False),
    ("acqtime 100", True),
    ("acqtime 101", False),
    ("acqtime 0", True),
    ("acqtime inf", True),
    ("acqtime 1-4", True),
    ("acqtime forever", False),
    ("output current", True),
    ("output energy", True),
    ("output power", False),
    ("format ascii_dec", True),
    ("format bin_hexa", True),
    ("format hex", False),
    ("trigsrc sw", True),
    ("trigsrc d7", True),
    ("trigsrc d6", False),
    ("trigdelay 0", True),
    ("trigdelay 30", True),
    ("trigdelay 31", False),
    ("trigdelay 1m", True),
    ("eventsrc d7 fal", True),
    ("eventsrc d7 ris", True),
    ("eventsrc d7 up", False),
    ("eventsrc d6 fal", False),
    ("eventsrc d7", False),
    ("pwr auto", True),
    ("pwr on", True),
    ("pwr off", True),
    ("pwr get", True),
    ("pwr on nostatus", True),
    ("pwr on status", True),
    ("pwr on verbose", False),
    ("pwr", False),
    ("pwr up", False),
    ("pwrend on", True),
    ("pwrend off", True),
    ("pwrend maybe", False),
    ('lcd 1 "MLPerf Tiny"', True),
    ('lcd 2 "     monitor    "', True),
    ('lcd 1 "0123456789abcdef"', True),
    ('lcd 1 "0123456789abcdefg"', False),
    ('lcd 3 "x"', False),
    ("lcd 1 MLPerf", False),
    ('lcd 1 ""', True),
    ("targrst 10m", True),
    ("targrst 9m", False),
    ("targrst 1", True),
    ("targrst 2", False),
    ("targrst 0", True),
    ("currthres 1m", True),
    ("currthres 0", True),
    ("currthres 51m", False),
    ("acqmode dyn", True),
    ("acqmode fast", False),
    ("funcmode optim", True),
    ("temp", True),
    ("temp degc", True),
    ("temp degf", True),
    ("temp kelvin", False),
    ("htc", True),
    ("hrc", True),
    ("help", True),
    ("echo hello", True),
    ("powershield", True),
    ("version", True),
    ("status", True),
    ("range", True),
    ("calib", True),
    ("autotest", True),
    ("autotest start stat_all", True),
    ("autotest go", False),
    ("frobnicate", False),
    ("htc now", False),
]


@pytest.mark.parametrize(("command", "ok"), RANGE_CASES)
def test_firmware_range_checks(command: str, ok: bool) -> None:
    host, fw = controlled()
    reply = exchange(host, fw, command)
    assert reply.ok is ok
    if not ok:
        assert reply.error_detail  # default firmware prints Error detail
    # The echo is verbatim in either case.
    assert command in reply.events[0].line.decode()


@pytest.mark.parametrize(
    "command",
    [
        "volt 1800m",
        "freq 1k",
        "pwr on",
        "start",
        "stop",
        'lcd 1 "MLPerf Tiny"',
        "output energy",
        "targrst 0",
    ],
)
def test_firmware_commands_before_htc_are_refused(command: str) -> None:
    host, fw = Lpm01aHost(), Lpm01aFirmware()
    actions = fw.feed(host.send(command))
    assert (
        written(actions)
        == (
            f"{PROMPT}error {command}\r\n{PROMPT}Error detail: host control "
            "required (send htc first)\r\n"
        ).encode()
    )
    assert len(actions) == 1  # no side effect
    host.feed(written(actions))
    assert not host.take_replies()[0].ok


@pytest.mark.parametrize("command", ["version", "powershield", "status", "help", "echo x"])
def test_firmware_identification_works_without_htc(command: str) -> None:
    host, fw = Lpm01aHost(), Lpm01aFirmware()
    assert exchange(host, fw, command).ok


def test_firmware_exact_reply_bytes() -> None:
    fw = Lpm01aFirmware()
    assert fw.feed(b"htc\r\n") == [Write(b"PowerShield > ack htc\r\n")]
    assert fw.feed(b"htc\n") == [Write(b"PowerShield > ack htc\r\n")]  # LF alone frames too
    assert fw.feed(b"volt get\r\n") == [Write(b"PowerShield > ack volt get 3300-03\r\n")]
    assert fw.feed(b"bogus\r\n") == [
        Write(b"PowerShield > error bogus\r\nPowerShield > Error detail: unknown command\r\n")
    ]
    assert fw.feed(b"\r\n") == []


def test_firmware_error_detail_switch() -> None:
    fw = Lpm01aFirmware(error_detail=False)
    assert fw.feed(b"bogus\r\n") == [Write(b"PowerShield > error bogus\r\n")]


def test_firmware_actions() -> None:
    fw = Lpm01aFirmware()
    fw.feed(b"htc\r\n")
    assert fw.feed(b"pwr on\r\n")[1:] == [PowerSwitch(True)]
    assert fw.feed(b"pwr off\r\n")[1:] == [PowerSwitch(False)]
    assert fw.feed(b"targrst 500m\r\n")[1:] == [TargetReset(0.5)]
    assert fw.powered
    assert fw.feed(b"targrst 0\r\n")[1:] == [PowerSwitch(False)]
    assert not fw.powered
    fw.feed(b"freq 1k\r\n")
    # pwr auto (the default mode) powers the target at start.
    fw.feed(b"pwr auto\r\n")
    assert fw.feed(b"start\r\n")[1:] == [PowerSwitch(True), StartAcquisition(1000)]
    assert fw.running
    assert fw.feed(b"stop\r\n")[1:] == [StopAcquisition()]
    assert fw.feed(b"psrst\r\n") == [Write(b"PowerShield > ack psrst\r\n"), Reset()]
    assert fw.feed(b"htc\r\n") == []  # resetting


def test_firmware_pwrend_off_cuts_power_after_acquisition() -> None:
    fw = Lpm01aFirmware()
    fw.feed(b"htc\r\npwrend off\r\n")
    fw.feed(b"start\r\n")
    assert fw.feed(b"stop\r\n")[1:] == [StopAcquisition(), PowerSwitch(False)]


def test_firmware_setup_refused_during_acquisition() -> None:
    host, fw = controlled()
    exchange(host, fw, "start")
    assert not exchange(host, fw, "freq 1k").ok
    assert not exchange(host, fw, "start").ok
    assert exchange(host, fw, "volt get").ok  # reading is fine
    assert exchange(host, fw, "pwr off").ok  # the runner does this while streaming
    assert exchange(host, fw, "stop").ok


def test_firmware_old_firmware_rejects_pwr_off_and_eventsrc() -> None:
    host, fw = Lpm01aHost(), Lpm01aFirmware(old_firmware=True)
    exchange(host, fw, "htc")
    assert not exchange(host, fw, "pwr off").ok
    assert not exchange(host, fw, "eventsrc d7 fal").ok
    assert exchange(host, fw, "pwr on").ok


def test_firmware_finite_acquisition_end() -> None:
    fw = Lpm01aFirmware()
    fw.feed(b"htc\r\nstart\r\n")
    assert fw.acquisition_finished() == [StopAcquisition()]
    assert fw.acquisition_finished() == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2m", "0.002"),
        ("2-3", "0.002"),
        ("100u", "0.0001"),
        ("1k", "1000"),
        ("30", "30"),
        ("5+2", "500"),
        ("100n", "1E-7"),
        ("2m5", None),
        ("", None),
        ("1.5", None),
        ("-3", None),
    ],
)
def test_parse_number(text: str, value: str | None) -> None:
    parsed = parse_number(text)
    if value is None:
        assert parsed is None
    else:
        assert parsed is not None and parsed == type(parsed)(value)


# --------------------------------------------------------------------------------------------
# energy bookkeeping
# --------------------------------------------------------------------------------------------


def test_energy_capture_windows() -> None:
    host, capture = Lpm01aHost(), EnergyCapture()
    stream = b"".join(format_sample(1e-6) for _ in range(3)) + format_event(0)
    stream += b"".join(format_sample(2e-6) for _ in range(5)) + format_event(1)
    stream += format_sample(1e-6) + format_timestamp(1000, 3)
    capture.extend(host.feed(stream))
    window = capture.drain()
    assert window.events == ((0, 3), (1, 8))
    assert window.timestamps == ((1000, 9),)
    start, stop = (idx for _, idx in window.events[-2:])
    assert sum(window.samples[start:stop]) == pytest.approx(10e-6)
    assert capture.sample_count == 0
    # Numbering continues across drains; indices restart.
    capture.extend(host.feed(format_sample(1e-6) + format_event(2)))
    assert capture.drain().events == ((2, 1),)


def test_energy_capture_counts_nan_samples() -> None:
    capture = EnergyCapture()
    capture.add(classify_line(b"1234-08xx"))
    capture.add(classify_line(b"event 0 ris"))
    window = capture.drain()
    assert len(window.samples) == 2 and math.isnan(window.samples[1])
    assert window.events == ((0, 2),)


def test_energy_capture_rejects_non_consecutive_events() -> None:
    capture = EnergyCapture()
    capture.add(classify_line(b"event 0 ris"))
    with pytest.raises(RemoteProtocolError, match="got 2, expected 1"):
        capture.add(classify_line(b"event 2 ris"))
    assert capture.drain().events == ((0, 0), (2, 0))  # recorded anyway
    # A gap across a drain is caught too.
    with pytest.raises(RemoteProtocolError):
        capture.add(classify_line(b"event 4 ris"))


def test_energy_capture_extend_records_everything_before_raising() -> None:
    capture = EnergyCapture()
    events = [
        classify_line(x) for x in (b"event 0 ris", b"event 5 ris", b"1234-08", b"event 6 ris")
    ]
    with pytest.raises(RemoteProtocolError):
        capture.extend(events)
    window = capture.drain()
    assert window.events == ((0, 0), (5, 0), (6, 1))
    assert len(window.samples) == 1


def test_energy_capture_acquisition_completed_restarts_numbering() -> None:
    capture = EnergyCapture()
    capture.extend(
        [
            classify_line(b"event 0 ris"),
            classify_line(b"event 1 ris"),
            classify_line(ACQUISITION_COMPLETED_LINE.rstrip()),
            classify_line(b"event 0 ris"),
        ]
    )
    assert [n for n, _ in capture.drain().events] == [0, 1, 0]


def test_energy_window_first_sample_counts_earlier_windows() -> None:
    host, capture = Lpm01aHost(), EnergyCapture()
    capture.extend(host.feed(format_sample(1e-6) * 3))
    assert capture.drain().first_sample == 0
    capture.extend(host.feed(format_sample(1e-6) * 2 + format_event(0)))
    window = capture.drain()
    assert window.first_sample == 3 and window.events == ((0, 2),)
    # A new acquisition numbers its samples from 0 again.
    capture.extend(host.feed(format_sample(1e-6) + ACQUISITION_COMPLETED_LINE))
    capture.drain()
    capture.extend(host.feed(format_sample(1e-6)))
    assert capture.drain().first_sample == 0


# --------------------------------------------------------------------------------------------
# stream formatting (device side)
# --------------------------------------------------------------------------------------------

SAMPLE_LINE = re.compile(rb"\d{4}[+-]\d{2}\r\n")


def test_format_sample_examples() -> None:
    assert format_sample(6409e-7) == b"6409-07\r\n"
    assert format_sample(1.234e-5) == b"1234-08\r\n"
    assert format_sample(0.0) == b"0000+00\r\n"
    assert format_sample(1234.0) == b"1234+00\r\n"
    assert format_sample(9.9996e-5) == b"1000-07\r\n"  # rounds up into the next decade
    assert format_sample(1.2345e-5) in (b"1234-08\r\n", b"1235-08\r\n")
    assert format_sample(1.23450001e-5) == b"1235-08\r\n"
    assert format_sample(1e-120) == b"0000+00\r\n"
    assert format_sample(33930e-8, digits=5) == b"33930-08\r\n"


@pytest.mark.parametrize("bad", [-1e-6, math.nan, math.inf, 1e110])
def test_format_sample_refuses(bad: float) -> None:
    with pytest.raises(ValueError):
        format_sample(bad)


def test_format_sample_round_trip_over_many_magnitudes() -> None:
    rng = random.Random(42)
    for exponent in range(-30, 6):
        for _ in range(50):
            value = rng.uniform(1, 10) * 10.0**exponent
            line = format_sample(value)
            assert SAMPLE_LINE.fullmatch(line), line
            (parsed,) = classify_line(line[:-2]).values
            # Half a unit of the 4th significant digit.
            assert abs(parsed - value) <= 0.5e-3 * value * (1 + 1e-9), (value, line)
            wide = format_sample(value, digits=5)
            (parsed5,) = classify_line(wide[:-2]).values
            assert abs(parsed5 - value) <= 0.5e-4 * value * (1 + 1e-9), (value, wide)


def test_format_timestamp() -> None:
    assert format_timestamp(12_345, 7) == b"TimeStamp: 012s 345ms, buff 07%\r\n"
    assert format_timestamp(0, 0) == b"TimeStamp: 000s 000ms, buff 00%\r\n"
    assert format_timestamp(1_000_000, 99) == b"TimeStamp: 000s 000ms, buff 99%\r\n"  # wrap
    assert format_timestamp(999_999, 5) == b"TimeStamp: 999s 999ms, buff 05%\r\n"
    for ms in (0, 1, 999, 1000, 123_456, 999_999):
        ts = classify_line(format_timestamp(ms, 42)[:-2])
        assert isinstance(ts, TimeStamp) and (ts.ms, ts.buff) == (ms, 42)
    with pytest.raises(ValueError):
        format_timestamp(0, 100)


def test_format_event() -> None:
    assert format_event(3) == b"event 3 ris\r\n"
    assert classify_line(format_event(17)[:-2]) == EdgeEvent(b"event 17 ris", 17, "ris")


# --------------------------------------------------------------------------------------------
# robustness
# --------------------------------------------------------------------------------------------


def test_high_bytes_and_noise_never_crash() -> None:
    rng = random.Random(99)
    for _ in range(200):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
        fw = Lpm01aFirmware()
        fw.feed(b"htc\r\n")
        for action in fw.feed(noise + b"\r\n"):
            assert isinstance(
                action,
                Write | PowerSwitch | TargetReset | StartAcquisition | StopAcquisition | Reset,
            )
        host = Lpm01aHost()
        host.feed(noise)
        host.send("htc")
        host.feed(noise + b"\n" + noise + b"\r\n")
        host.flush()
        host.take_replies()
        capture = EnergyCapture()
        for event in host.feed(noise + b"\n"):
            # A garbled event number is a legitimate remote error, nothing else is.
            with contextlib.suppress(RemoteProtocolError):
                capture.add(event)
    for b in range(0x80, 0x100):
        for prefix in (b"", b"PowerShield > ", b"1234-08", b"TimeStamp: ", b"event 1 ", b"ack "):
            classify_line(prefix + bytes([b]))
