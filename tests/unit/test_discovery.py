"""Discovery: matching config matches against constructed port lists (no USB device exists
here), suggestions, and the boards.json side with real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from agent.config import BoardConfig, Match
from agent.discovery import (
    DiscoveryError,
    MatchError,
    PortInfo,
    list_ports,
    resolve,
    resolve_board,
    sim_ports,
    suggest,
)

# Three identical NUCLEO boards, an interface board, an LPM01A and a serial-less adapter.
PORTS = [
    PortInfo(
        f"/dev/ttyACM{i}",
        "0483",
        "374B",
        serial,
        by_id=f"/dev/serial/by-id/usb-STMicroelectronics_STM32_STLink_{serial}-if02",
        description="STM32 STLink",
        manufacturer="STMicroelectronics",
    )
    for i, serial in enumerate(("066DFF495150", "066DFF495151", "066DFF495152"))
] + [
    PortInfo("/dev/ttyACM3", "0483", "374E", "003A0029", description="STLINK-V3"),
    PortInfo("/dev/ttyACM4", "0483", "5740", "2071329B", description="PowerShield"),
    PortInfo("/dev/ttyUSB0", "1A86", "7523", None, description="USB Serial"),
    PortInfo("/dev/ttyS0", source="system"),
]


def test_resolve_by_serial_among_identical_boards() -> None:
    port = resolve(Match(serial="066DFF495151"), PORTS)
    assert port.device == "/dev/ttyACM1"
    assert port.path.startswith("/dev/serial/by-id/")  # stable across re-enumeration
    # Serial numbers compare case-insensitively; vid_pid must agree when given.
    assert resolve(Match(serial="066dff495152", vid_pid="0483:374B"), PORTS).device == (
        "/dev/ttyACM2"
    )


def test_ambiguous_vid_pid_lists_candidates_and_suggests_serial() -> None:
    with pytest.raises(MatchError) as info:
        resolve(Match(vid_pid="0483:374B"), PORTS)
    message = str(info.value)
    assert message.startswith("3 devices match vid_pid=0483:374B")
    assert all(f"/dev/ttyACM{i}" in message for i in range(3))
    assert "match by serial number" in message and "serial: 066DFF495150" in message
    assert [p.device for p in info.value.candidates] == [f"/dev/ttyACM{i}" for i in range(3)]


def test_no_match_lists_what_is_connected() -> None:
    with pytest.raises(MatchError) as info:
        resolve(Match(serial="DEADBEEF"), PORTS)
    message = str(info.value)
    assert message.startswith("no serial device matches serial=DEADBEEF; connected: ")
    assert "/dev/ttyACM4 [0483:5740 serial 2071329B] PowerShield" in message
    assert "/dev/ttyS0" not in message  # not a board
    with pytest.raises(MatchError, match="no USB serial device is connected"):
        resolve(Match(serial="DEADBEEF"), PORTS[-1:])


def test_right_serial_wrong_vid_pid_says_which_device_it_is() -> None:
    with pytest.raises(MatchError, match="the device with serial 003A0029 is /dev/ttyACM3"):
        resolve(Match(serial="003A0029", vid_pid="0483:374B"), PORTS)


def test_path_matches_listed_devices_and_passes_through_existing_paths(tmp_path: Path) -> None:
    by_id = PORTS[1].by_id
    assert by_id is not None
    assert resolve(Match(path=by_id), PORTS).device == "/dev/ttyACM1"
    assert resolve(Match(path="socket://127.0.0.1:7777"), PORTS).source == "path"
    tty = tmp_path / "tty"
    tty.touch()
    assert resolve(Match(path=str(tty)), PORTS).device == str(tty)
    with pytest.raises(MatchError):
        resolve(Match(path=str(tmp_path / "absent")), PORTS)
    with pytest.raises(MatchError):  # a serial cannot be checked on an unlisted path
        resolve(Match(path=str(tty), serial="066DFF495150"), PORTS)


def test_resolve_board_names_board_and_role() -> None:
    board = BoardConfig.model_validate(
        {
            "id": "nucleo-a",
            "dut": {"match": {"serial": "066DFF495150"}},
            "interface": {"match": {"vid_pid": "0483:374E"}},
            "monitor": {"match": {"serial": "2071329B"}},
        }
    )
    resolved = resolve_board(board, PORTS)
    assert resolved.dut == PORTS[0].by_id
    assert (resolved.interface, resolved.monitor) == ("/dev/ttyACM3", "/dev/ttyACM4")
    with pytest.raises(MatchError, match="board nucleo-a: monitor: no serial device matches"):
        resolve_board(board, PORTS[:4])


def test_suggest_gives_paste_ready_yaml_with_serial_matches() -> None:
    text = suggest(PORTS[:-1])
    documents = list(yaml.safe_load_all(text))
    assert len(documents) == 6
    assert documents[0] == {"dut": {"match": {"serial": "066DFF495150", "vid_pid": "0483:374B"}}}
    assert documents[3] == {"interface": {"match": {"serial": "003A0029", "vid_pid": "0483:374E"}}}
    assert documents[4] == {"monitor": {"match": {"serial": "2071329B", "vid_pid": "0483:5740"}}}
    # Without a serial number only the port tells the device apart.
    assert documents[5] == {"match": {"vid_pid": "1A86:7523", "path": "/dev/ttyUSB0"}}
    assert "# /dev/ttyACM0 (/dev/serial/by-id/usb-STMicroelectronics_STM32_STLink_" in text
    assert "ST-LINK/V2-1: likely the DUT" in text and "likely the LPM01A" in text
    # Every snippet is a valid match for the config.
    for document in documents:
        match = next(iter(document.values()))
        Match.model_validate(match.get("match", match))


def write_boards_json(tmp_path: Path) -> Path:
    dut = tmp_path / "dut"
    dut.symlink_to("/dev/null")
    boards = {
        "control": str(tmp_path / "control.sock"),
        "boards": [
            {
                "id": "sim-01-kws01",
                "model": "kws01",
                "dut": {
                    "path": str(dut),
                    "usb": {"vid": "0483", "pid": "374b", "serial": "AB12"},
                },
                "interface": {
                    "path": str(tmp_path / "unplugged"),
                    "usb": {"vid": "0483", "pid": "374E", "serial": "CD34"},
                },
                "monitor": None,
            }
        ],
    }
    path = tmp_path / "boards.json"
    path.write_text(json.dumps(boards))
    return path


def test_sim_devices_are_listed_like_usb_ones(tmp_path: Path) -> None:
    boards_json = write_boards_json(tmp_path)
    ports = sim_ports(boards_json)
    # The interface's symlink is gone (a simulated unplug): not listed, as a USB device.
    assert [p.device for p in ports] == [str(tmp_path / "dut")]
    port = ports[0]
    assert (port.vid_pid, port.serial, port.source) == ("0483:374B", "AB12", f"sim:{boards_json}")
    assert resolve(Match(serial="ab12"), list_ports([boards_json])).device == str(tmp_path / "dut")
    # The pty behind the symlink is the same device.
    assert resolve(Match(path=os.path.realpath(tmp_path / "dut")), ports) == port


def test_unreadable_boards_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match=r"boards\.json: not found: is `farm sim` running"):
        list_ports([tmp_path / "boards.json"])
    (tmp_path / "boards.json").write_text('{"boards": [{"id": "x"}]}')
    with pytest.raises(DiscoveryError, match=r"boards\.json: not a farm sim boards file"):
        sim_ports(tmp_path / "boards.json")
    (tmp_path / "boards.json").write_text("{")
    with pytest.raises(DiscoveryError, match=r"boards\.json: not JSON"):
        sim_ports(tmp_path / "boards.json")
