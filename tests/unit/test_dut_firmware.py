"""The DUT firmware model (device side): exact strings and every quirk of
docs/protocols.md#dut."""

from __future__ import annotations

import pytest

from farm.models import MODELS, format_results
from farm.protocol import dut
from farm.protocol import dut_firmware as fw


def firmware(model: str = "kws01", build: fw.Build = "performance", outputs=None) -> fw.DutFirmware:
    spec = MODELS[model]
    values = outputs if outputs is not None else [0.5] * spec.outputs
    f = fw.DutFirmware(spec, build, lambda tensor: values)
    f.boot()
    f.parser_enabled = True
    return f


def written(actions: list[fw.DutAction]) -> bytes:
    """What the firmware printed (laps shown with a dummy counter of 0)."""
    out = b""
    for a in actions:
        if isinstance(a, fw.Write):
            out += a.data
        elif isinstance(a, fw.Lap):
            out += fw.format_lap(0)
    return out


def run(f: fw.DutFirmware, data: bytes) -> bytes:
    return written(f.receive(data))


# --- boot -----------------------------------------------------------------------------------


def test_performance_boot_banner() -> None:
    f = fw.DutFirmware(MODELS["ic01"], "performance", lambda t: [0.1] * 10)
    actions = f.boot()
    assert written(actions) == (
        b"m-timestamp-mode-performance\r\nm-lap-us-0\r\nm-init-done\r\nm-ready\r\n"
    )
    # the parser is enabled only after m-init-done, just before m-ready
    assert actions.index(fw.EnableParser()) == len(actions) - 2


def test_energy_boot_banner_pulses_instead_of_a_lap() -> None:
    f = fw.DutFirmware(MODELS["ic01"], "energy", lambda t: [0.1] * 10)
    actions = f.boot()
    assert written(actions) == b"m-timestamp-mode-energy\r\nm-init-done\r\nm-ready\r\n"
    assert fw.Pulse() in actions


def test_commands_completed_during_boot_are_dropped_silently() -> None:
    f = fw.DutFirmware(MODELS["kws01"], "performance", lambda t: [0.0] * 12)
    f.boot()
    assert f.receive(b"name%profile%") == []
    f.parser_enabled = True
    assert run(f, b"name%") == b"m-name-dut-[unspecified]\r\nm-ready\r\n"


# --- commands (docs/protocols.md#dut-commands) ----------------------------------------------


def test_name_and_profile() -> None:
    f = firmware("vww01")
    assert run(f, b"name%") == b"m-name-dut-[unspecified]\r\nm-ready\r\n"
    assert run(f, b"profile%") == (
        b"m-profile-[ULPMark for tinyML Firmware V0.0.1]\r\nm-model-[vww01]\r\nm-ready\r\n"
    )


def test_help_is_twelve_lines_with_the_shipped_typos() -> None:
    out = run(firmware(), b"help%").split(b"\r\n")
    assert out[-2:] == [b"m-ready", b""]
    help_lines = out[:-2]
    assert len(help_lines) == 12
    assert help_lines[1] == b""
    text = b"\n".join(help_lines)
    assert b"timestsamp" in text and b"timetsamp" in text and b"infer N [W=0]" in text


def test_timestamp_per_build() -> None:
    assert run(firmware(), b"timestamp%") == b"m-lap-us-0\r\nm-ready\r\n"
    f = firmware(build="energy")
    actions = f.receive(b"timestamp%")
    assert fw.Pulse() in actions and written(actions) == b"m-ready\r\n"


def test_full_load_and_infer_reply() -> None:
    f = firmware("kws01", outputs=[0.0] * 11 + [0.992])
    assert run(f, b"db load 490%") == b"m-[Expecting 490 bytes]\r\nm-ready\r\n"
    data = bytes(range(256)) + bytes(234)
    out = b""
    for i in range(0, 490, 31):
        out += run(f, b"db " + data[i : i + 31].hex().encode() + b"%")
    assert out.count(b"m-ready\r\n") == 16 and out.endswith(b"m-load-done\r\nm-ready\r\n")
    actions = f.receive(b"infer 70 10%")
    assert written(actions) == (
        b"m-warmup-start-10\r\nm-warmup-done\r\nm-infer-start-70\r\nm-lap-us-0\r\nm-lap-us-0\r\n"
        b"m-infer-done\r\nm-results-[0.000,0.000,0.000,0.000,0.000,0.000,0.000,0.000,0.000,"
        b"0.000,0.000,0.992]\r\nm-ready\r\n"
    )
    kinds = [type(a).__name__ for a in actions if not isinstance(a, fw.Write)]
    assert kinds == ["Compute", "Lap", "Compute", "Lap"]
    assert fw.Compute("warmup", 10) in actions and fw.Compute("infer", 70) in actions


def test_infer_default_warmup_is_ten() -> None:
    assert b"m-warmup-start-10\r\n" in run(firmware(), b"infer 1%")


def test_energy_build_infer_pulses_around_the_window() -> None:
    f = firmware("ic01", build="energy")
    actions = f.receive(b"infer 20 0%")
    i = actions.index(fw.Compute("infer", 20))
    assert actions[i - 1] == fw.Pulse() and actions[i + 1] == fw.Pulse()
    assert b"m-lap-us" not in written(actions)


@pytest.mark.parametrize(
    ("model", "values", "line"),
    [
        ("kws01", [0.5] * 11 + [1.0], b"m-results-[" + b"0.500," * 11 + b"0.1000]"),
        ("kws01", [0.9999] + [0.0] * 11, b"m-results-[0.999" + b",0.000" * 11 + b"]"),
        ("vww01", [0.25, 0.75], b"m-results-[0.250,0.750,]"),
        ("ic01", [0.1] * 10, b"m-results-[" + b",".join([b"0.100"] * 10) + b"]"),
        ("ad01", [12.3456], b"m-results-[12.346]"),
    ],
)
def test_results_formats_of_the_reference_ports(
    model: str, values: list[float], line: bytes
) -> None:
    f = firmware(model, outputs=values)
    assert (
        run(f, b"results%")
        == b"m-results-["
        + format_results(MODELS[model].result_format, [0.0] * MODELS[model].outputs).encode()
        + b"]\r\nm-ready\r\n"
    )
    out = run(f, b"infer 1 0%")
    assert line + b"\r\n" in out
    assert run(f, b"results%") == line + b"\r\nm-ready\r\n"


def test_db_print_dumps_the_declared_buffer_with_the_extra_blank_line() -> None:
    f = firmware()
    run(f, b"db load 10%")
    run(f, b"db 00112233445566778899%")
    assert run(f, b"db print 3 4%") == (
        b"m-buffer-00-11-22-33-44-55-66-77\r\nm-buffer-88-99\r\n\r\nm-ready\r\n"
    )


# --- errors (docs/protocols.md#dut-errors), every row ---------------------------------------


def test_unknown_command() -> None:
    assert run(firmware(), b"foo bar%") == b"e-[Unknown command: foo]\r\nm-ready\r\n"


def test_db_without_subcommand() -> None:
    assert run(firmware(), b"db%") == b"e-[Command 'db' requires a subcommand]\r\nm-ready\r\n"


def test_db_load_without_size() -> None:
    assert (
        run(firmware(), b"db load%")
        == b"e-[Command 'db load' requires the # of bytes]\r\nm-ready\r\n"
    )


@pytest.mark.parametrize("arg", [b"0", b"abc", b"-5"])
def test_db_load_not_positive(arg: bytes) -> None:
    f = firmware()
    run(f, b"db load 10%")
    assert (
        run(f, b"db load " + arg + b"%") == b"e-[Command 'db load' must be >0 bytes]\r\nm-ready\r\n"
    )
    # size set to 0: a chunk now never completes a load
    assert run(f, b"db 00%") == b"m-ready\r\n"


def test_db_load_above_maximum_is_lf_only_and_keeps_the_size() -> None:
    f = firmware("kws01")
    assert (
        run(f, b"db load 600%") == b"Supplied buffer size 600 exceeds maximum of 490\nm-ready\r\n"
    )
    # the size *is* 600: 490 bytes do not complete the load, and more overflow the array
    for _ in range(12):  # 456 bytes
        assert run(f, b"db " + b"00" * 38 + b"%") == b"m-ready\r\n"
    actions = f.receive(b"db " + b"00" * 38 + b"%")  # 494 > the 490-byte array
    assert any(isinstance(a, fw.Overflow) for a in actions)


def test_odd_number_of_hex_digits() -> None:
    f = firmware()
    run(f, b"db load 2%")
    assert run(f, b"db 012%") == b"e-[Insufficent number of hex digits]\r\nm-ready\r\n"
    assert run(f, b"db 0102%") == b"m-load-done\r\nm-ready\r\n"  # nothing was stored before


def test_bad_hex_pair_keeps_the_pairs_before_it() -> None:
    f = firmware()
    run(f, b"db load 3%")
    assert run(f, b"db 0102zz03%") == b"e-[Invalid hex digit 'zz']\r\nm-ready\r\n"
    assert run(f, b"db 03%") == b"m-load-done\r\nm-ready\r\n"
    assert run(f, b"db print%").startswith(b"m-buffer-01-02-03\r\n")


def test_db_hex_before_any_load_never_completes() -> None:
    f = firmware()
    assert run(f, b"db 0102%") == b"m-ready\r\n"
    run(f, b"db load 2%")
    assert run(f, b"db 0102%") == b"m-load-done\r\nm-ready\r\n"
    # after m-load-done the position keeps growing past the size: no second m-load-done
    assert run(f, b"db 0102%") == b"m-ready\r\n"


def test_surplus_digits_after_load_done_are_ignored() -> None:
    f = firmware()
    run(f, b"db load 1%")
    assert run(f, b"db aabbcc%") == b"m-load-done\r\nm-ready\r\n"


def test_command_over_80_chars_is_truncated_silently() -> None:
    f = firmware()
    run(f, b"db load 100%")
    # a 45-byte chunk: 'db ' + 90 digits = 93 characters, cut to 80 -> 77 digits (odd)
    assert (
        run(f, b"db " + b"ab" * 45 + b"%") == b"e-[Insufficent number of hex digits]\r\nm-ready\r\n"
    )
    # an even cut (78 digits = 39 bytes) loads fewer bytes without a word
    run(f, b"db load 40%")
    assert run(f, b"db  " + b"ab" * 40 + b"%") == b"m-ready\r\n"  # 2 spaces: 'db  ' + 76 digits
    assert run(f, b"db 0000%") == b"m-load-done\r\nm-ready\r\n"  # 38 + 2 = 40


@pytest.mark.parametrize("cmd", [b"infer 0%", b"infer x%"])
def test_infer_needs_positive_iterations(cmd: bytes) -> None:
    assert run(firmware(), cmd) == b"e-[Inference iterations must be >0]\r\nm-ready\r\n"


def test_infer_negative_warmup() -> None:
    assert run(firmware(), b"infer 5 -1%") == b"e-[Inference warmup must be >=0]\r\nm-ready\r\n"


def test_infer_with_wrong_loaded_length_reports_lf_only_and_uses_the_stale_tensor() -> None:
    seen: list[bytes] = []
    spec = MODELS["kws01"]
    f = fw.DutFirmware(spec, "performance", lambda t: seen.append(t) or [0.0] * 12)
    f.boot()
    f.parser_enabled = True
    run(f, b"db load 490%")
    for _ in range(490 // 35):
        run(f, b"db " + b"07" * 35 + b"%")
    run(f, b"infer 1 0%")
    run(f, b"db load 490%")
    run(f, b"db 0102%")
    out = run(f, b"infer 1 0%")
    assert out.startswith(b"Input db has 2 elemented, expected 490\nm-warmup-start-0\r\n")
    assert seen[-1] == b"\x07" * 490  # ran on the previous tensor


def test_ad_counts_float_elements() -> None:
    f = firmware("ad01", outputs=[1.0])
    run(f, b"db load 8%")
    run(f, b"db 0000000000000000%")
    assert run(f, b"infer 1 0%").startswith(b"Input db has 2 elemented, expected 640\n")


def test_empty_command_reports_null() -> None:
    assert run(firmware(), b"%") == b"e-[Unknown command: (null)]\r\nm-ready\r\n"
    assert run(firmware(), b"   %") == b"e-[Unknown command: (null)]\r\nm-ready\r\n"


def test_cr_lf_are_not_stripped_from_commands() -> None:
    assert run(firmware(), b"name\r\n%") == b"e-[Unknown command: name\r\n]\r\nm-ready\r\n"


def test_host_parser_reads_every_firmware_reply() -> None:
    """The two sides agree: everything the firmware prints classifies as a known kind."""
    f = firmware("vww01", outputs=[0.25, 0.75])
    host = dut.DutHost()
    script = [
        "name", "profile", "help", "timestamp", "db load 4", "db 01020304", "db print",
        "infer 2 1", "results", "db", "db load", "db load 0", "db load 99999", "db 123",
        "db zz", "infer 0", "infer 1 -1", "bogus",
    ]  # fmt: skip
    for cmd in script:
        host.send(cmd)
        events = host.feed(run(f, cmd.encode() + b"%"))
        reply = host.next_reply()
        assert reply is not None, cmd
        # Every line the firmware printed belongs to the reply: none arrived after m-ready.
        assert list(reply.events) == events, cmd
        assert not reply.garbage, cmd
        if cmd != "help":
            assert not reply.of(dut.Unknown), (cmd, reply.lines)
