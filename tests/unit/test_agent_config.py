"""Agent config: a valid file round-trips; every mistake is `FILE:LINE: field: message`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.board_access import BoardAccess
from agent.config import (
    AgentConfig,
    ConfigError,
    default_journal,
    dump_agent_config,
    load_agent_config,
    render_command,
)
from agent.discovery import ResolvedBoard
from agent.energy_monitor import MonitorTarget

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
agent: pi-01
broker:
  url: mqtts://farm:secret@broker.lab:8884
  tls:
    ca: certs/ca.pem
datasets: data
sim_boards: [sim/boards.json]
boards:
  - id: nucleo-a
    dut:
      match: {serial: "066DFF495150", vid_pid: 0483:374b}
    interface:
      match: {serial: "003A0029"}
    monitor:
      match: {serial: "2071329B"}
    supply_voltage: 3.0
    firmware:
      images:
        kws01: {performance: fw/kws01-p.bin, energy: fw/kws01-e.bin}
      flash: pyocd flash --uid {serial} --target {target} {image}
      target: stm32l4r5zitx
    power_cycle: {method: monitor, off_s: 0.5}
    tags: {rack: "2"}
    system: {status: Preview, board_name: NUCLEO-L4R5ZI}
  - id: nucleo-b
    dut:
      match: {serial: "066DFF495151"}
    baud: {performance: 9600}
    power_cycle:
      method: command
      command: uhubctl --location 1-1 --ports 3 --action cycle
"""


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    return path, str(info.value)


def edited(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new, 1)


def test_valid_config_loads_and_round_trips(tmp_path: Path) -> None:
    cfg = load_agent_config(write(tmp_path, VALID))
    a, b = cfg.boards
    assert a.dut.match.vid_pid == "0483:374B"  # normalised to upper case
    assert a.energy_capable and not b.energy_capable
    assert a.system.status == "preview"
    assert a.system.model_dump(by_alias=True, exclude_none=True) == {
        "Status": "preview",
        "Board Name": "NUCLEO-L4R5ZI",
    }
    assert b.baud.performance == 9600 and b.baud.energy is None
    assert cfg.broker.host == "broker.lab" and cfg.broker.port == 8884 and cfg.broker.use_tls
    assert cfg.broker.credentials() == ("farm", "secret")
    assert cfg.journal == default_journal("pi-01")

    # Elsewhere, so a path that stayed relative would resolve differently on reading back.
    (tmp_path / "copy").mkdir()
    again = write(tmp_path / "copy", dump_agent_config(cfg, header="a header\nof two lines"))
    assert again.read_text().startswith("# a header\n# of two lines\nagent: pi-01\n")
    assert load_agent_config(again) == cfg


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = load_agent_config(write(tmp_path, VALID))
    assert cfg.datasets == tmp_path / "data"
    assert cfg.sim_boards == [tmp_path / "sim" / "boards.json"]
    assert cfg.broker.tls is not None and cfg.broker.tls.ca == tmp_path / "certs" / "ca.pem"
    images = cfg.boards[0].firmware.images["kws01"]
    assert images == {
        "performance": tmp_path / "fw/kws01-p.bin",
        "energy": tmp_path / "fw/kws01-e.bin",
    }


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        (
            "    tags: {rack",
            "    tag: {rack",
            23,
            "boards[0].tag",
            "Extra inputs are not permitted",
        ),
        (
            "{performance: 9600}",
            "{performance: -9600}",
            28,
            "boards[1].baud.performance",
            "greater than 0",
        ),
        ("0483:374b", "0483:37", 11, "boards[0].dut.match.vid_pid", "4-digit hex"),
        ('serial: "066DFF495151"', "serial: 0671", 27, "boards[1].dut.match.serial", "quote it"),
        (
            "      flash: pyocd flash --uid {serial}",
            "      flash: pyocd flash --uid {serail}",
            20,
            "boards[0].firmware.flash",
            "unknown placeholder {serail}",
        ),
        (
            "{method: monitor, off_s: 0.5}",
            "{method: command}",
            22,
            "boards[0].power_cycle.command",
            "needs a command",
        ),
        ("  - id: nucleo-b", "  - id: nucleo-a", 25, "boards[1].id", "already used by boards[0]"),
        (
            'serial: "066DFF495151"',
            'serial: "066dff495150"',
            27,
            "boards[1].dut.match",
            "same device as boards[0].dut",
        ),
        ("kws01: {", "kws02: {", 19, "boards[0].firmware.images.kws02", "unknown model"),
        ("  - id: nucleo-a", "  - id: nucleo/a", 9, "boards[0].id", "should match pattern"),
        (
            "    baud: {performance: 9600}\n",
            "    firmware: {images: {ad01: {energy: e.bin}}}\n",
            28,
            "boards[1].firmware.images.ad01.energy",
            "an energy build needs",
        ),
        (
            "  url: mqtts://farm:secret@broker.lab:8884\n",
            "  url: mqtts://broker.lab\n  username: farm\n  password: x\n  password_file: pw\n",
            6,
            "broker.password_file",
            "give password or password_file, not both",
        ),
        ("mqtts://farm:secret@", "mqtt://farm:secret@", 4, "broker.tls", "TLS settings with an"),
        ("mqtts://farm:secret@broker.lab:8884", "http://x", 3, "broker.url", "expected mqtt://"),
        ("    ca: certs/ca.pem", "    cert: c.pem", 4, "broker.tls.key", "needs its key"),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, line: int, field: str, message: str
) -> None:
    path, text = error_of(tmp_path, edited(old, new))
    assert f"{path}:{line}: {field}: " in text, text
    assert message in text


def test_interface_without_monitor(tmp_path: Path) -> None:
    text = VALID.replace('    monitor:\n      match: {serial: "2071329B"}\n', "")
    text = text.replace("{method: monitor, off_s: 0.5}", "{method: none}")
    text = text.replace(", energy: fw/kws01-e.bin", "")
    path, message = error_of(tmp_path, text)
    assert (
        f"{path}:12: boards[0].interface: an interface board without an energy monitor" in message
    )


def test_power_cycle_through_a_monitor_the_board_does_not_have(tmp_path: Path) -> None:
    text = edited("    baud: {performance: 9600}\n", "    power_cycle: {method: monitor}\n")
    text = text.replace(
        "    power_cycle:\n      method: command\n      command: uhubctl --location 1-1 --ports 3 "
        "--action cycle\n",
        "",
    )
    path, message = error_of(tmp_path, text)
    assert f"{path}:28: boards[1].power_cycle.method: method 'monitor'" in message


def test_password_file_is_read_and_named_when_unreadable(tmp_path: Path) -> None:
    text = edited(
        "  url: mqtts://farm:secret@broker.lab:8884\n",
        "  url: mqtts://broker.lab\n  username: farm\n  password_file: secrets/pw\n",
    )
    cfg = load_agent_config(write(tmp_path, text))
    assert cfg.broker.port == 8883  # mqtts default
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}/secrets/pw: cannot read")):
        cfg.broker.credentials()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("s3cret\n")
    assert cfg.broker.credentials() == ("farm", "s3cret")


def test_yaml_problems(tmp_path: Path) -> None:
    path, message = error_of(tmp_path, "")
    assert message == f"{path}: the file is empty"
    path, message = error_of(tmp_path, "agent: a\nboards: [\n")
    assert message.startswith(f"{path}:3: not valid YAML")
    path, message = error_of(tmp_path, VALID + "agent: pi-02\n")
    assert message == f"{path}:32: 'agent' is given twice"
    with pytest.raises(ConfigError, match="cannot read"):
        load_agent_config(tmp_path / "missing.yaml")


def test_missing_required_fields(tmp_path: Path) -> None:
    path, message = error_of(tmp_path, "agent: a\n")
    assert f"{path}:1: datasets: Field required" in message
    assert f"{path}:1: boards: Field required" in message


def test_flash_template_checks_and_renders() -> None:
    with pytest.raises(ValueError, match=r"must use \{image\}"):
        AgentConfig.model_validate(
            {
                "agent": "a",
                "datasets": "/d",
                "boards": [
                    {
                        "id": "b",
                        "dut": {"match": {"serial": "S"}},
                        "firmware": {"flash": "st-flash write"},
                    }
                ],
            }
        )
    argv = render_command(
        "st-flash --serial {serial} write {image} 0x08000000",
        {"serial": "066D", "image": "/fw/my image.bin"},
    )
    assert argv == ["st-flash", "--serial", "066D", "write", "/fw/my image.bin", "0x08000000"]


def test_deploy_example_validates() -> None:
    cfg = load_agent_config(ROOT / "deploy" / "agent.example.yaml")
    a, b = cfg.boards
    assert a.energy_capable and a.power_cycle.method == "monitor"
    assert b.power_cycle.method == "command" and b.firmware.target == "stm32h743zitx"
    assert cfg.broker.use_tls and cfg.broker.password_file is not None
    assert a.dut.match.serial and b.dut.match.serial


def test_unknown_keys_get_the_closest_known_one(tmp_path: Path) -> None:
    path, message = error_of(tmp_path, edited("    supply_voltage: 3.0", "    supply_volts: 3.0"))
    assert f"{path}:16: boards[0].supply_volts: Extra inputs are not permitted" in message
    assert "did you mean 'supply_voltage'?" in message
    _, message = error_of(tmp_path, edited("  tls:\n    ca:", "  tls:\n    caa:"))
    assert "did you mean 'ca'?" in message
    _, message = error_of(tmp_path, VALID + "zzzz: 1\n")
    assert "zzzz: Extra inputs are not permitted" in message and "did you mean" not in message


# -- the energy monitor: LPM01A or JS220 --------------------------------------------------------

JS220 = """\
agent: pi-02
datasets: data
boards:
  - id: js-a
    dut:
      match: {serial: "066DFF495150"}
    interface:
      match: {serial: "003A0029"}
    monitor:
      kind: js220
      match: {serial: "000415"}
    power_cycle: {method: none}
  - id: js-b
    dut:
      match: {serial: "066DFF495151"}
    interface:
      match: {serial: "003A0030"}
    monitor: {kind: js220, match: {serial: "000777"}}
"""


def test_a_js220_monitor_is_found_by_serial_not_as_a_serial_port(tmp_path: Path) -> None:
    cfg = load_agent_config(write(tmp_path, JS220))
    a, b = cfg.boards
    assert a.monitor is not None and a.monitor.kind == "js220"
    assert a.monitor.js220_serial == "000415" and a.energy_capable
    assert b.monitor is not None and b.monitor.js220_serial == "000777"
    assert [role for role, _ in a.devices()] == ["dut", "interface"]
    resolved = ResolvedBoard(dut="/dev/ttyACM0", interface="/dev/ttyACM1")
    assert BoardAccess(a, []).monitor_target(resolved) == MonitorTarget("js220", "000415")
    lpm_board = load_agent_config(write(tmp_path, VALID, "lpm.yaml")).boards[0]
    resolved = ResolvedBoard(dut="/dev/ttyACM0", interface="/dev/ttyACM1", monitor="/dev/ttyACM2")
    assert BoardAccess(lpm_board, []).monitor_target(resolved) == MonitorTarget(
        "lpm01a", "/dev/ttyACM2"
    )
    # The only JS220 connected: no match at all.
    only = JS220.split("  - id: js-b")[0].replace('      match: {serial: "000415"}\n', "")
    [board] = load_agent_config(write(tmp_path, only, "only.yaml")).boards
    assert board.monitor is not None and board.monitor.js220_serial is None
    again = write(tmp_path, dump_agent_config(cfg), "again.yaml")
    assert load_agent_config(again) == cfg


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        ("kind: js220\n", "kind: js221\n", 10, "boards[0].monitor.kind", "'lpm01a' or 'js220'"),
        (
            '      match: {serial: "000415"}\n',
            "      match: {vid_pid: 16D0:10BA}\n",
            11,
            "boards[0].monitor.match",
            "match it by its USB serial number only",
        ),
        (
            '    monitor: {kind: js220, match: {serial: "000777"}}\n',
            "    monitor: {kind: lpm01a}\n",
            18,
            "boards[1].monitor.match",
            "an LPM01A is a serial device: give its match",
        ),
        (
            "{method: none}",
            "{method: monitor}",
            12,
            "boards[0].power_cycle.method",
            "a JS220 only measures",
        ),
        (
            "    power_cycle: {method: none}\n",
            "    supply_voltage: 3.3\n",
            12,
            "boards[0].supply_voltage",
            "a JS220 does not supply the DUT",
        ),
        (
            'match: {serial: "000777"}}',
            'match: {serial: "000415"}}',
            18,
            "boards[1].monitor.match.serial",
            "JS220 000415 is already boards[0]'s monitor",
        ),
        (
            ', match: {serial: "000777"}}',
            "}",
            18,
            "boards[1].monitor.kind",
            "boards[0] uses a JS220 too: with two, give each its USB serial number",
        ),
    ],
)
def test_monitor_errors_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, line: int, field: str, message: str
) -> None:
    assert old in JS220
    path, text = error_of(tmp_path, JS220.replace(old, new, 1))
    assert f"{path}:{line}: {field}" in text, text
    assert message in text
