"""Simulator config: validation errors name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.sim.config import ConfigError, generated_config, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "boards.yaml"
    path.write_text(text)
    return path


def test_valid_config(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """\
seed: 3
boards:
  - id: kws-a
    model: kws01
    latency: {median_s: 0.002, tail_probability: 0.01}
    quality: 0.5
    faults:
      - {kind: hang, command: infer, after: 3}
  - id: vww-energy
    model: vww01
    energy: true
    firmware: energy
""",
        )
    )
    assert [b.id for b in cfg.boards] == ["kws-a", "vww-energy"]
    assert cfg.boards[0].median_s == 0.002 and cfg.boards[0].dut_baud == 115200
    assert cfg.boards[1].dut_baud == 9600  # energy firmware talks at 9600
    assert cfg.boards[0].faults[0].target == "dut"


def test_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
boards:
  - id: a
    model: kws01
  - id: b
    model: kws01
    latency:
      median_s: -1
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:7: boards[1].latency.median_s:" in str(info.value)
    assert "greater than 0" in str(info.value)


def test_unknown_model_and_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "boards:\n  - id: a\n    model: kws02\n    colour: red\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:3: boards[0].model:" in message and "unknown model 'kws02'" in message
    assert f"{path}:4: boards[0].colour: Extra inputs are not permitted" in message


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "boards:\n  - id: a\n    model: [kws01\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_config(path)


def test_energy_firmware_needs_the_energy_hardware(tmp_path: Path) -> None:
    path = write(tmp_path, "boards:\n  - id: a\n    model: ic01\n    firmware: energy\n")
    with pytest.raises(ConfigError, match="set energy: true"):
        load_config(path)


def test_duplicate_ids_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "boards:\n  - {id: a, model: ic01}\n  - {id: a, model: ad01}\n")
    with pytest.raises(ConfigError, match="used twice"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_generated_boards_cycle_the_models() -> None:
    cfg = generated_config(6, None, energy=2, seed=0)
    assert [b.model for b in cfg.boards] == ["kws01", "vww01", "ic01", "ad01", "kws01", "vww01"]
    assert [b.energy for b in cfg.boards] == [False] * 4 + [True] * 2
    assert cfg.boards[-1].firmware == "energy"
    one_each = generated_config(None, ["ic01", "ad01"], energy=0, seed=0)
    assert [b.model for b in one_each.boards] == ["ic01", "ad01"]
    with pytest.raises(ConfigError, match="unknown model"):
        generated_config(None, ["ic09"], energy=0, seed=0)


@pytest.mark.parametrize(
    ("board", "error"),
    [
        # A device that cannot inject a fault:
        (
            "faults:\n      - {kind: garbage, device: interface}\n",
            "the interface simulator cannot inject 'garbage'",
        ),
        # The energy firmware does not talk on the DUT port, so it cannot be unplugged from it:
        ("firmware: energy\n    faults:\n      - {kind: disconnect}\n", "does not talk on"),
    ],
)
def test_faults_the_board_cannot_have_are_refused(tmp_path: Path, board: str, error: str) -> None:
    path = write(tmp_path, "boards:\n  - id: a\n    model: kws01\n    energy: true\n    " + board)
    with pytest.raises(ConfigError, match=error):
        load_config(path)
