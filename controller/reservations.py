"""Board reservations: a person holds a board for a while (``farm board reserve``), and the
farm schedules nothing on it meanwhile.

A reservation is a hash in Redis (``farm:board:{board}:reservation``: holder, note, since,
until), so it survives a controller restart. It ends:

- **on expiry**: readers treat a reservation past ``until`` as gone at once, and the
  controller's periodic tick (:func:`end_lapsed`, in the worker supervisor's reaper) deletes
  it and records it in the board's history;
- **when released**: ``farm board release`` by the holder (or anyone with ``--force``);
- **when the holder disappears**: while ``farm board console`` is open it keeps a liveness
  key alive (``farm:board:{board}:console``, expiring after :func:`console_grace_s`); a
  reservation whose console vanished without closing (its terminal or host gone) ends at the
  next tick. A reservation without an open console just runs until it expires.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import redis

from controller import board_history, keys
from controller.board_history import CONTROLLER, Operation
from controller.store import OPERATION

#: The longest reservation (a forgotten one must not hold a board for ever).
MAX_RESERVATION_S = 7 * 86400
#: How long an open console may go unheard before its holder counts as gone.
DEFAULT_CONSOLE_GRACE_S = 30.0

# Take the board unless someone else holds it unexpired: [holder, until] of that one, or {}.
_RESERVE = """
local holder = redis.call('hget', KEYS[1], 'holder')
local untl = tonumber(redis.call('hget', KEYS[1], 'until') or '0')
local now = tonumber(ARGV[2])
if holder and holder ~= ARGV[1] and untl > now then
  return {holder, tostring(untl)}
end
if not holder or holder ~= ARGV[1] or untl <= now then
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[1], 'since', ARGV[2])
end
redis.call('hset', KEYS[1], 'board', ARGV[5], 'holder', ARGV[1], 'until', ARGV[3], 'note', ARGV[4])
return {}
"""
# Delete the reservation only if it is still the one read (its holder and until).
_END = """
if redis.call('hget', KEYS[1], 'holder') == ARGV[1]
   and redis.call('hget', KEYS[1], 'until') == ARGV[2] then
  return redis.call('del', KEYS[1])
end
return 0
"""
# Record the open console on the holder's unexpired reservation; 0 if it is not theirs.
_CONSOLE = """
if redis.call('hget', KEYS[1], 'holder') ~= ARGV[1]
   or tonumber(redis.call('hget', KEYS[1], 'until') or '0') <= tonumber(ARGV[3]) then
  return 0
end
redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('hset', KEYS[1], 'console', ARGV[2])
return 1
"""
# Free the board's lease if a console of this holder holds it (a console that vanished).
_FREE_CONSOLE_LEASE = """
local token = redis.call('get', KEYS[1])
if token and string.sub(token, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
# Forget the console session if it is still the one recorded.
_CONSOLE_CLOSED = """
if redis.call('hget', KEYS[1], 'console') == ARGV[1] then
  redis.call('hdel', KEYS[1], 'console')
end
if redis.call('get', KEYS[2]) == ARGV[1] then
  redis.call('del', KEYS[2])
end
return 1
"""


class ReservationError(Exception):
    """The board is held by someone else, or not reserved by the caller."""


def console_grace_s() -> float:
    """``FARM_CONSOLE_GRACE_S``: how long an open console may go unheard (default 30 s)."""
    raw = os.environ.get("FARM_CONSOLE_GRACE_S")
    try:
        value = float(raw) if raw else DEFAULT_CONSOLE_GRACE_S
    except ValueError:
        raise ValueError(f"FARM_CONSOLE_GRACE_S={raw!r}: expected seconds") from None
    if not 1 <= value <= 3600:
        raise ValueError(f"FARM_CONSOLE_GRACE_S={raw!r}: expected 1 to 3600 seconds")
    return value


def clock(at: float) -> str:
    """A moment as the lab's people read it (local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


@dataclass(frozen=True)
class Reservation:
    """Who holds a board, until when and why."""

    board: str
    holder: str
    since: float
    until: float
    note: str = ""
    console: str | None = None
    """The open console's session id, if one is open."""
    raw_until: str = ""
    """``until`` exactly as stored (what :data:`_END` compares)."""

    def describe(self) -> str:
        """``reserved by USER until TIME (NOTE)``: the reason sweeps give for skipping it."""
        note = f" ({self.note})" if self.note else ""
        return f"reserved by {self.holder} until {clock(self.until)}{note}"

    def to_json(self) -> dict[str, object]:
        """For ``--json`` output."""
        return {
            "holder": self.holder,
            "since": self.since,
            "until": self.until,
            "note": self.note,
            "console": self.console,
        }


def parse(board: str, raw: dict[str, str]) -> Reservation | None:
    """``board``'s reservation from its hash as stored (expired or not); None if empty."""
    if not raw.get("holder") or not raw.get("until"):
        return None
    return Reservation(
        board=board,
        holder=raw["holder"],
        since=float(raw.get("since") or 0),
        until=float(raw["until"]),
        note=raw.get("note", ""),
        console=raw.get("console") or None,
        raw_until=raw["until"],
    )


def current(client: redis.Redis, boards: list[str], now: float) -> dict[str, Reservation]:
    """The unexpired reservations of ``boards``, by board, in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for board in boards:
            pipe.hgetall(keys.board_reservation(board))
        found = pipe.execute()
    held = {}
    for board, raw in zip(boards, found, strict=True):
        reservation = parse(board, raw)
        if reservation is not None and reservation.until > now:
            held[board] = reservation
    return held


def get(client: redis.Redis, board: str, now: float | None = None) -> Reservation | None:
    """``board``'s reservation unless it has expired."""
    return current(client, [board], time.time() if now is None else now).get(board)


def reserve(
    client: redis.Redis, board: str, holder: str, seconds: float, note: str = ""
) -> Reservation:
    """Reserve ``board`` for ``holder`` for ``seconds`` from now (a holder reserving again
    moves the end and the note). ``ReservationError`` if someone else holds it."""
    if not 0 < seconds <= MAX_RESERVATION_S:
        raise ReservationError(f"a reservation lasts up to {MAX_RESERVATION_S // 86400} days")
    now = time.time()
    until = now + seconds
    other = client.eval(
        _RESERVE, 1, keys.board_reservation(board), holder, repr(now), repr(until), note, board
    )
    if other:
        raise ReservationError(
            f"board {board} is reserved by {other[0]} until {clock(float(other[1]))}"
        )
    board_history.record(
        client,
        board,
        Operation("reserve", holder, "ok", detail={"until": until, "note": note}),
    )
    found = get(client, board, now)
    assert found is not None
    return found


def end(client: redis.Redis, reservation: Reservation, who: str, why: str) -> bool:
    """End ``reservation`` if it is still the one stored (``why``: released, expired, the
    holder's console vanished), recorded in the board's history; False if it had changed."""
    ended = client.eval(
        _END,
        1,
        keys.board_reservation(reservation.board),
        reservation.holder,
        reservation.raw_until,
    )
    if not ended:
        return False
    client.delete(keys.board_console(reservation.board))
    board_history.record(
        client,
        reservation.board,
        Operation(
            "unreserve",
            who,
            "ok",
            reason=why,
            detail={"holder": reservation.holder, "until": reservation.until},
        ),
    )
    return True


def end_lapsed(client: redis.Redis, boards: list[str], now: float) -> list[tuple[str, str]]:
    """The controller's tick: end every reservation of ``boards`` that expired or whose
    console's holder disappeared; (board, why) of each one ended here."""
    with client.pipeline(transaction=False) as pipe:
        for board in boards:
            pipe.hgetall(keys.board_reservation(board))
            pipe.get(keys.board_console(board))
        found = pipe.execute()
    ended = []
    for i, board in enumerate(boards):
        reservation = parse(board, found[2 * i])
        if reservation is None:
            continue
        alive = found[2 * i + 1]
        if reservation.until <= now:
            why = f"expired at {clock(reservation.until)}"
        elif reservation.console is not None and alive != reservation.console:
            why = f"its holder's console ({reservation.console}) disappeared"
            # Its lease would hold the board for the rest of its TTL: the console is gone.
            client.eval(
                _FREE_CONSOLE_LEASE,
                1,
                keys.lease(board),
                f"{OPERATION}console:{reservation.holder}:",
            )
        else:
            continue
        if end(client, reservation, CONTROLLER, why):
            ended.append((board, why))
    return ended


def console_alive(
    client: redis.Redis, board: str, holder: str, session: str, grace_s: float
) -> bool:
    """Record ``session`` as the console open on ``holder``'s reservation of ``board``, alive
    for ``grace_s`` more (the console calls this again well within it); False if ``holder``
    does not hold the board (any more): the console then ends."""
    return bool(
        client.eval(
            _CONSOLE,
            2,
            keys.board_reservation(board),
            keys.board_console(board),
            holder,
            session,
            repr(time.time()),
            int(grace_s * 1000),
        )
    )


def console_closed(client: redis.Redis, board: str, session: str) -> None:
    """Forget ``session`` (closed normally: the reservation goes on until it expires)."""
    client.eval(
        _CONSOLE_CLOSED, 2, keys.board_reservation(board), keys.board_console(board), session
    )
