"""`farm agent check` finds a board's JS220 through the joulescope package (the fake module:
the JS220 is USB-only), and names what is connected when it is not there."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm.cli import app
from tests import fake_joulescope
from tests.fake_joulescope import FakeDevice, Scripted

CONFIG = """\
agent: pi-02
datasets: {root}
boards:
  - id: js-a
    dut:
      match: {{path: {dut}}}
    interface:
      match: {{path: {interface}}}
    monitor:
      kind: js220
      match: {{serial: "{serial}"}}
"""


def write_config(tmp_path: Path, serial: str) -> Path:
    for name in ("dut", "interface"):
        (tmp_path / name).touch()  # a plain path that exists is taken as given
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "agent.yaml"
    path.write_text(
        CONFIG.format(
            root=tmp_path / "data",
            dut=tmp_path / "dut",
            interface=tmp_path / "interface",
            serial=serial,
        )
    )
    return path


@pytest.fixture
def js220s(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = Scripted([], chunk=1)
    fake_joulescope.install(
        monkeypatch, FakeDevice("000415", profile), FakeDevice("000777", profile)
    )


def test_check_finds_the_js220_by_serial(tmp_path: Path, js220s: None) -> None:
    done = CliRunner().invoke(
        app, ["agent", "check", "--config", str(write_config(tmp_path, "000415"))]
    )
    assert done.exit_code == 0, done.output
    assert "JS220-000415" in done.output
    assert "ok: 3 devices of 1 board(s) found" in done.output


def test_check_names_the_connected_js220s_when_the_serial_is_missing(
    tmp_path: Path, js220s: None
) -> None:
    done = CliRunner().invoke(
        app, ["agent", "check", "--config", str(write_config(tmp_path, "999"))]
    )
    assert done.exit_code == 1
    assert (
        "board js-a monitor: no JS220 (16D0:10BA) with serial 999; Joulescopes: JS220-000415, "
        "JS220-000777" in " ".join(done.output.split())
    )
