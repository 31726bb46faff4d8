"""Log events keep their fields whatever the values hold, in both output formats."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from farm.logs import LogFormat, get_logger, setup_logging

NASTY = ValueError("port '/dev/ttyACM0', baud 115200: \"busy\", retry=2 \\ done\nnext line")
ESCAPE = re.compile(r"\\(.)")
PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    """Read one logfmt line back, undoing the renderer's quoting and escapes."""
    fields = {}
    for key, raw in PAIR.findall(line):
        if raw.startswith('"'):
            raw = ESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], raw[1:-1])
        fields[key] = raw
    return fields


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_exception_with_commas_and_quotes_survives_as_a_field(
    fmt: LogFormat, restore_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", fmt)
    get_logger("farm.test").warning("resync_failed", board="b-1", error=NASTY, attempt=2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines  # the newline inside the value did not split the event
    fields = json.loads(lines[0]) if fmt == "json" else parse_logfmt(lines[0])
    assert fields["event"] == "resync_failed"
    assert fields["error"] == repr(NASTY)
    assert fields["board"] == "b-1"
    assert str(fields["attempt"]) == "2"
    assert fields["logger"] == "farm.test"
    assert fields["level"] == "warning"


def test_standard_library_records_share_the_format(
    restore_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", "json")
    logging.getLogger("rq.worker").info("job %s, started", "a'b")
    event = json.loads(capsys.readouterr().err)
    assert event == {**event, "event": "job a'b, started", "logger": "rq.worker"}


def test_level_filters_events(restore_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warning", "kv")
    log = get_logger("farm.test.level")
    log.info("quiet", n=1)
    log.error("loud", n=2)
    err = capsys.readouterr().err
    assert "quiet" not in err
    assert parse_logfmt(err)["event"] == "loud"


def test_exception_traceback_is_one_field(
    restore_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", "json")
    try:
        raise RuntimeError("a, 'b'")
    except RuntimeError:
        get_logger("farm.test").exception("crashed", run="r1")
    event = json.loads(capsys.readouterr().err)
    assert event["run"] == "r1"
    assert "RuntimeError: a, 'b'" in event["exception"]
