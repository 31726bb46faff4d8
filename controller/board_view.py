"""What ``farm status`` shows of the boards' operator state: who holds a board (a reservation,
a quarantine), its latest operation, and with ``--board`` its whole history."""

from __future__ import annotations

import time
from typing import Any

import redis

from controller import board_history, quarantine, reservations
from controller.render import Column, Listing


def ago(at: float | None, now: float) -> str:
    """``5s``, ``3m``, ``2h``, ``4d`` ago (``-`` for never)."""
    if not at:
        return "-"
    seconds = max(0.0, now - at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def operation_text(entry: dict[str, Any] | None, now: float) -> str | None:
    """``flash ok by alice 5m ago``."""
    if not entry:
        return None
    return f"{entry['op']} {entry['result']} by {entry['who']} {ago(entry.get('time'), now)} ago"


def holds(client: redis.Redis, boards: list[str], now: float) -> dict[str, dict[str, Any]]:
    """Per board: its reservation, quarantine and latest operation (each None if none)."""
    held = reservations.current(client, boards, now)
    latest = board_history.latest(client, boards)
    found = {}
    for board in boards:
        entry = quarantine.get(client, board)
        reservation = held.get(board)
        found[board] = {
            "reservation": reservation.to_json() if reservation else None,
            "quarantine": entry,
            "last_operation": latest.get(board),
            "held": _held_text(reservation, entry, now),
        }
    return found


def _held_text(
    reservation: reservations.Reservation | None, entry: dict[str, Any] | None, now: float
) -> str | None:
    parts = []
    if entry is not None:
        parts.append("quarantined")
    if reservation is not None:
        until = time.strftime("%H:%M", time.localtime(reservation.until))
        console = " (console)" if reservation.console else ""
        parts.append(f"{reservation.holder} until {until}{console}")
    return ", ".join(parts) or None


#: A table cell's word longer than this (a device path in a reason) is cut to its end.
LONGEST_WORD = 32


def _short_words(value: Any) -> str:
    """``value`` with every overlong word cut to its last characters, so that a reason holding
    a path still fits a table column (csv and json keep it whole)."""
    if value is None or value == "":
        return "-"
    return " ".join(
        w if len(w) <= LONGEST_WORD else "…" + w[-(LONGEST_WORD - 1) :] for w in str(value).split()
    )


def history_listing(board: str, entries: list[dict[str, Any]], now: float) -> Listing:
    """One board's operations, newest first."""
    return Listing(
        f"history of {board}",
        [
            Column("time", "when", lambda v: reservations.clock(v) if v else "-", rank=1),
            Column("ago", "ago", justify="right", rank=2),
            Column("op", "operation"),
            Column("who", "who"),
            Column("result", "result"),
            Column("reason", "reason", _short_words),
        ],
        [{**e, "ago": ago(e.get("time"), now)} for e in entries],
    )


def board_detail(client: redis.Redis, board: str, status: dict[str, Any]) -> dict[str, Any]:
    """``farm status --board``'s document: the board's status, who holds it, its history."""
    now = time.time()
    held = holds(client, [board], now)[board]
    return {
        "board": board,
        "status": status,
        "reservation": held["reservation"],
        "quarantine": held["quarantine"],
        "history": board_history.recent(client, board),
    }


def detail_notes(document: dict[str, Any], now: float) -> list[str]:
    """The lines above the history table: state, health, reservation, quarantine."""
    status = document["status"]
    notes = [
        f"{document['board']} on {status.get('agent')}: {status.get('state')}, health "
        f"{status.get('health')}"
        + (f" ({status['health_reason']})" if status.get("health_reason") else "")
        + f", last checked {ago(status.get('checked'), now)} ago"
    ]
    reservation = document["reservation"]
    if reservation:
        notes.append(
            f"reserved by {reservation['holder']} until {reservations.clock(reservation['until'])}"
            + (f" ({reservation['note']})" if reservation["note"] else "")
            + (f", console {reservation['console']} open" if reservation["console"] else "")
        )
    entry = document["quarantine"]
    if entry:
        notes.append(
            f"quarantined since {reservations.clock(entry['since'])} by {entry['by']}: "
            f"{entry['reason']}"
        )
    return notes
