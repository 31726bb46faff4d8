"""The pieces of board operations that need no agent: the console's wire (pacing, order,
repeats), durations, when a board is due for a scheduled health check, how long the
controller waits for each operation, and reservations and quarantine in a real Redis database
(db 4, flushed by each test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
from pydantic import ValidationError

from controller import board_history, keys, quarantine, reservations
from controller.board_cli import parse_duration
from controller.board_ops import bound_s, flash_timeout_s
from controller.deadline import SLACK
from controller.estimate import health_check_s
from controller.health_schedule import (
    _LIFT_OWN_GUARD,
    CHECK_QUEUE,
    HealthPolicy,
    due,
    schedule,
    why_due,
)
from controller.judge import JUDGE_TIMEOUT_S
from controller.queueing import queue
from controller.reservations import ReservationError
from controller.store import Lease, board_status, rq_connection
from farm.board_timing import (
    FLASH_TIMEOUT_S,
    POWER_COMMAND_TIMEOUT_S,
    REENUMERATION_S,
    check_s,
    direct_attempt_s,
    dut_exchange_s,
    energy_attempt_s,
)
from farm.messages import COMMANDS, BoardStatus
from farm.protocol.console import ConsoleWire
from farm.wire import WireModel

#: Database 4 by default (``FARM_TEST_CONTROLLER_REDIS`` picks another, as for the controller's
#: integration tests).
REDIS_URL = os.environ.get("FARM_TEST_CONTROLLER_REDIS", "redis://127.0.0.1:6379/4")


@pytest.fixture
def db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


# -- the console's wire -----------------------------------------------------------------------


def test_console_lines_go_out_once_in_order_each_after_the_dut_is_ready() -> None:
    wire = ConsoleWire("%", "m-ready")
    wire.receive(2, "profile")  # ahead of line 1: waits for it
    assert wire.to_write() == b"" and wire.pending == 1
    wire.receive(1, "name")
    assert wire.to_write() == b"name%" and wire.waiting
    wire.receive(1, "name")  # a redelivery: written once
    assert wire.to_write() == b""  # line 2 waits for the DUT's ready
    assert wire.feed(b"m-name-dut-[x]\r\nm-rea") == ["m-name-dut-[x]"]
    assert wire.to_write() == b""
    assert wire.feed(b"dy\r\n") == ["m-ready"]
    assert wire.to_write() == b"profile%" and wire.pending == 0
    # A DUT that never says it is ready: the agent stops waiting.
    wire.receive(3, "help")
    assert wire.to_write() == b""
    wire.stop_waiting()
    assert wire.to_write() == b"help%"
    # A prompt without a line end comes out once the DUT is quiet.
    assert wire.feed(b"m-ready\r\n> ") == ["m-ready"]
    assert wire.flush() == ["> "] and wire.flush() == []


def test_console_without_a_ready_line_sends_lines_as_they_come() -> None:
    wire = ConsoleWire("\n", None)
    for seq, line in enumerate(["a", "b", "c"], 1):
        wire.receive(seq, line)
    assert wire.to_write() == b"a\nb\nc\n" and not wire.waiting


def test_console_commands_are_validated() -> None:
    base = {"schema": "farm/v1", "id": "c1", "type": "console", "board": "b1", "session": "s1"}
    command = COMMANDS.validate_python({**base, "action": "line", "seq": 1, "line": "name"})
    assert (command.type, command.eol, command.ready) == ("console", "%", "m-ready")
    with pytest.raises(ValidationError, match="no CR, LF or NUL"):
        COMMANDS.validate_python({**base, "action": "line", "seq": 1, "line": "a\nb"})
    with pytest.raises(ValidationError):
        COMMANDS.validate_python({**base, "action": "reboot"})
    # An end of line the wire cannot carry one byte a character is refused in the message
    # (it used to raise inside the agent's board task and stop the whole agent), and by the
    # CLI before anything is sent.
    for eol in ("€", "%\0", "%%%%%"):
        with pytest.raises(ValidationError, match="eol"):
            COMMANDS.validate_python({**base, "action": "open", "eol": eol})
    done = subprocess.run(
        [sys.executable, "-m", "farm.cli", "board", "console", "b1", "--eol", "€"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FARM_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert done.returncode == 2 and "only latin-1 characters" in done.stderr, done.stderr


# -- durations and scheduled checks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("5s", 5), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "h", "1h30", "-5s", "1 h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_when_a_board_is_due_for_a_check() -> None:
    policy = HealthPolicy(interval_s=600, after_failures=2)
    idle = {"state": "idle", "health": "good", "checked": 1000.0, "failures": 0}
    assert why_due(idle, policy, 1599) is None
    assert why_due(idle, policy, 1600) == "unchecked for 600 s"
    assert why_due({**idle, "checked": None}, policy, 1000) == "never checked"
    assert why_due({**idle, "failures": 2, "health": "unknown"}, policy, 1001) == (
        "2 failures in a row"
    )
    assert why_due({**idle, "state": "busy"}, policy, 5000) is None
    assert why_due({**idle, "health": "bad"}, policy, 5000) is None  # an operator's call
    assert why_due(idle, HealthPolicy(0, 0), 10**9) is None  # both rules off


def test_the_health_policy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_HEALTH_INTERVAL_S", "3600")
    monkeypatch.setenv("FARM_HEALTH_AFTER_FAILURES", "0")
    assert HealthPolicy.from_env() == HealthPolicy(3600.0, 0)
    monkeypatch.setenv("FARM_HEALTH_AFTER_FAILURES", "1.5")
    with pytest.raises(ValueError, match=r"FARM_HEALTH_AFTER_FAILURES=1\.5: expected a whole"):
        HealthPolicy.from_env()
    monkeypatch.setenv("FARM_HEALTH_INTERVAL_S", "soon")
    with pytest.raises(ValueError, match="FARM_HEALTH_INTERVAL_S='soon'"):
        HealthPolicy.from_env()


def store_board(db: redis.Redis, board: str, **fields: object) -> None:
    """A board status as ingest stores it, of an online agent ``pi``."""
    status = BoardStatus.model_validate(
        {"agent": "pi", "board": board, "state": "idle", "health": "good", **fields}
    )
    db.hset(keys.board(board), mapping={"agent": "pi", "status": status.dumps(), "last_seen": 1})
    db.sadd(keys.BOARDS, board)
    db.sadd(keys.AGENTS, "pi")
    db.hset(keys.agent("pi"), "state", "online")


def test_only_idle_free_unheld_boards_are_due(db: redis.Redis) -> None:
    now = time.time()
    old = now - 3600
    for board in ("free", "leased", "reserved", "quarantined", "queued", "fresh"):
        store_board(db, board, checked=now if board == "fresh" else old)
    store_board(db, "failing", checked=now, failures=3, health="unknown")
    assert Lease.acquire(db, "leased") is not None
    reservations.reserve(db, "reserved", "alice", 60)
    quarantine.quarantine(db, "quarantined", "a test", "bob")
    db.rpush(keys.board_waiting("queued"), "r1")
    policy = HealthPolicy(interval_s=600, after_failures=2)
    assert due(db, policy, now) == {
        "free": "unchecked for 3600 s",
        "failing": "3 failures in a row",
    }
    db.delete(keys.board_waiting("queued"))  # the queued run had its turn and ended
    db.hset(keys.agent("pi"), "state", "offline")
    assert due(db, policy, now) == {}


# -- operation bounds ----------------------------------------------------------------------

FAST = {"bauds": [921600, 115200]}
SLOW = {"bauds": [9600, 115200, 921600]}


def test_a_checks_bound_comes_from_the_wire_time_model_at_the_boards_bauds() -> None:
    # The agent's worst case (every way in silent, each exchange to its own timeout), times
    # the slack the controller gives every modelled time.
    assert bound_s("health-check", FAST) == SLACK * check_s([921600, 115200])
    assert direct_attempt_s(9600) > direct_attempt_s(115200) > direct_attempt_s(921600)
    assert bound_s("health-check", SLOW) > bound_s("health-check", FAST)
    assert bound_s("health-check", SLOW) - bound_s("health-check", FAST) == pytest.approx(
        SLACK * direct_attempt_s(9600)
    )
    # The way through the interface board of a board wired for energy, at its DUT-side baud
    # (9600 when an older agent does not say).
    energy = {**FAST, "energy": True, "energy_baud": 9600}
    assert bound_s("health-check", energy) == pytest.approx(
        bound_s("health-check", {**FAST, "energy": True})
    )
    assert bound_s("health-check", energy) > bound_s("health-check", FAST) + SLACK * (
        energy_attempt_s(9600)
    )
    assert energy_attempt_s(9600) > energy_attempt_s(115200)
    # A status that lists no bauds (an older agent): every model's reference rate.
    assert health_check_s({}) == check_s([115200, 921600]) == health_check_s(FAST)
    # One exchange: the agent's own timeout for it (``name`` at 115200, docs/protocols.md).
    assert dut_exchange_s("name", WireModel(115200)) == pytest.approx(0.509, abs=1e-3)


def test_a_flash_and_a_power_cycle_add_their_tools_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    around = SLACK * 2 * REENUMERATION_S + bound_s("health-check", SLOW)
    assert bound_s("flash", SLOW) == FLASH_TIMEOUT_S + around == 180 + around
    assert bound_s("power-cycle", SLOW) == POWER_COMMAND_TIMEOUT_S + around == 60 + around
    monkeypatch.setenv("FARM_FLASH_TIMEOUT_S", "600")
    assert bound_s("flash", SLOW) == 600 + around
    for bad in ("soon", "0", "7200"):
        monkeypatch.setenv("FARM_FLASH_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="FARM_FLASH_TIMEOUT_S"):
            flash_timeout_s()


# -- reservations and quarantine ------------------------------------------------------------


def test_a_queued_check_holds_its_board_until_its_own_job_lifts_the_guard(
    db: redis.Redis,
) -> None:
    """A check waits on the high-priority queue, maybe long: the guard outlasts the wait, and
    a job lifts only its own guard (an old job ending late cannot free a newer check's)."""
    now = time.time()
    store_board(db, "free", checked=now - 3600)
    policy = HealthPolicy(interval_s=600, after_failures=0)
    assert schedule(db, rq_connection(db), policy, now) == ["free"]
    assert schedule(db, rq_connection(db), policy, now) == []  # queued already
    token = db.get(keys.board_check("free"))
    assert db.ttl(keys.board_check("free")) > JUDGE_TIMEOUT_S
    jobs = queue(CHECK_QUEUE, rq_connection(db)).get_job_ids()
    assert jobs == [token]
    # RQ's own limit is twice the check's bound: the job gives up at the bound itself.
    job = queue(CHECK_QUEUE, rq_connection(db)).fetch_job(token)
    assert job is not None
    assert job.timeout == math.ceil(2 * bound_s("health-check", board_status(db, "free") or {}))
    db.eval(_LIFT_OWN_GUARD, 1, keys.board_check("free"), "check-free-stale")
    assert db.get(keys.board_check("free")) == token
    db.eval(_LIFT_OWN_GUARD, 1, keys.board_check("free"), token)
    assert db.get(keys.board_check("free")) is None


def test_a_reservation_is_its_holders_until_it_ends(db: redis.Redis) -> None:
    held = reservations.reserve(db, "b1", "alice", 60, "uart")
    assert (held.holder, held.note, held.console) == ("alice", "uart", None)
    assert held.describe() == f"reserved by alice until {reservations.clock(held.until)} (uart)"
    with pytest.raises(ReservationError, match="board b1 is reserved by alice until"):
        reservations.reserve(db, "b1", "bob", 60)
    # Its holder moves the end; it keeps its start.
    again = reservations.reserve(db, "b1", "alice", 120)
    assert again.since == held.since and again.until > held.until and again.note == ""
    assert quarantine.unavailable(db, ["b1", "b2"], time.time()) == {"b1": again.describe()}
    quarantine.quarantine(db, "b1", "failed a check", "controller")
    assert quarantine.unavailable(db, ["b1"], time.time()) == {
        "b1": "quarantined: failed a check (farm board release b1)"
    }
    assert quarantine.lift(db, "b1") and not quarantine.lift(db, "b1")
    # Ended only if unchanged: a stale copy does not end a renewed reservation.
    assert not reservations.end(db, held, "alice", "released")
    assert reservations.end(db, again, "alice", "released")
    assert reservations.get(db, "b1") is None
    ops = [(e["op"], e["who"], e["reason"]) for e in board_history.recent(db, "b1")]
    assert ops == [
        ("unreserve", "alice", "released"),
        ("quarantine", "controller", "failed a check"),
        ("reserve", "alice", None),
        ("reserve", "alice", None),
    ]


def test_the_tick_ends_expired_reservations_and_vanished_consoles(db: redis.Redis) -> None:
    now = time.time()
    reservations.reserve(db, "old", "alice", 1)
    reservations.reserve(db, "con", "bob", 600)
    reservations.reserve(db, "quiet", "carol", 600)
    assert reservations.console_alive(db, "con", "bob", "s1", grace_s=0.2)
    assert not reservations.console_alive(db, "con", "carol", "s2", grace_s=5)  # not hers
    db.set(keys.lease("con"), "op:console:bob:abcd")
    # An expired reservation is gone for every reader at once, before the tick.
    assert reservations.get(db, "old", now + 1.5) is None
    assert reservations.end_lapsed(db, ["old", "con", "quiet"], now) == []
    time.sleep(0.3)  # the console's liveness key expires
    ended = dict(reservations.end_lapsed(db, ["old", "con", "quiet"], now + 1.5))
    assert ended["old"].startswith("expired at ")
    assert ended["con"] == "its holder's console (s1) disappeared"
    assert "quiet" not in ended and reservations.get(db, "quiet") is not None
    assert not db.exists(keys.lease("con"))  # the vanished console's lease freed
    entry = board_history.recent(db, "con")[0]
    assert (entry["op"], entry["who"], entry["detail"]["holder"]) == (
        "unreserve",
        "controller",
        "bob",
    )
    # A console closed normally leaves the reservation running.
    assert reservations.console_alive(db, "quiet", "carol", "s3", grace_s=0.2)
    reservations.console_closed(db, "quiet", "s3")
    time.sleep(0.3)
    assert reservations.end_lapsed(db, ["quiet"], time.time()) == []
    assert json.loads(db.lindex(keys.board_ops("quiet"), 0))["op"] == "reserve"


def test_history_is_capped(db: redis.Redis) -> None:
    for i in range(keys.OPS_KEPT + 5):
        board_history.record(db, "b1", board_history.Operation("health-check", f"u{i}", "ok"))
    entries = board_history.recent(db, "b1")
    assert len(entries) == keys.OPS_KEPT and entries[0]["who"] == f"u{keys.OPS_KEPT + 4}"
    assert board_history.latest(db, ["b1", "b2"]) == {"b1": entries[0]}
