"""``farm board ...``: one board's operations from the command line (docs/operations.md#boards).

``health-check``, ``flash`` and ``power-cycle`` are sent to the board's agent and wait for its
result (:mod:`controller.board_ops`); ``reserve`` and ``release`` hold a board for a person and
take it back into service (:mod:`controller.reservations`, :mod:`controller.quarantine`);
``console`` talks to the DUT through its agent (:mod:`controller.console_client`). Exit
status: 0 done, 1 the operation failed or was refused (busy, reserved by someone else, agent
offline), 2 bad input (an unknown board, model or duration).
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from farm.cli_common import console, err, fail

if TYPE_CHECKING:
    import redis

    from controller.board_ops import OperationResult
    from controller.settings import Settings

board_app = typer.Typer(
    help="One board's operations: health-check, flash, power-cycle, reserve, release, console.",
    no_args_is_help=True,
    add_completion=False,
)
BoardArg = Annotated[str, typer.Argument(help="The board id (see farm status)")]
RedisOpt = Annotated[str | None, typer.Option("--redis", help="Redis URL (FARM_REDIS_URL)")]
BrokerOpt = Annotated[str | None, typer.Option("--broker", help="MQTT URL (FARM_MQTT_URL)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="The result as one JSON object")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        min=1,
        max=3600,
        help="Seconds to wait for the agent's result (default: the operation's bound, from "
        "the wire-time model at the board's bauds)",
    ),
]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait", min=0, max=3600, help="Seconds to wait for a busy board (a run, an operation)"
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Even if someone else holds the board's reservation")
]


def _command(name: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a ``farm board`` command whose Redis refusal or outage met mid-way is one line
    naming the URL, exit 2 (as every controller command's: ``controller.cli._redis_errors``,
    looked up when called: that module imports this one)."""

    def register(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            from controller.cli import _redis_errors

            _redis_errors(command)(*args, **kwargs)

        board_app.command(name)(wrapper)
        return command

    return register


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m``, ``1d`` (or plain seconds) in seconds;
    ``ValueError`` for anything else."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"--for {text!r}: expected a duration such as 90s, 30m, 2h, 1h30m, 1d")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _connect(redis_url: str | None, broker: str | None) -> tuple[Settings, redis.Redis]:
    from controller.cli import _redis, _settings

    settings = _settings(redis_url, broker, None, (None, None, None))
    return settings, _redis(settings)


def _known(client: redis.Redis, board: str) -> dict[str, Any]:
    """``board``'s status; exit 2 naming the known boards (and the closest) if it is unknown."""
    from controller.store import all_boards
    from controller.sweeps import unknown_boards

    boards = all_boards(client)
    if board not in boards:
        raise fail(unknown_boards([board], list(boards)))
    return boards[board]


def _report(board: str, op: str, result: OperationResult, json_out: bool) -> None:
    """Print the agent's result; exit 1 if the operation failed."""
    if json_out:
        print(json.dumps({"board": board, "operation": op, **result.to_json()}))
    elif result.ok:
        what = ", ".join(f"{k}: {v}" for k, v in result.detail.items())
        console.print(
            f"{op} {board}: ok in {result.seconds:.1f} s" + (f" ({what})" if what else ""),
            highlight=False,
        )
    else:
        err.print(f"{op} {board}: {result.outcome}: {result.reason}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


def _operate(
    kind: str,
    board: str,
    settings: Settings,
    client: redis.Redis,
    *,
    timeout: float | None,
    wait: float,
    force: bool,
    json_out: bool,
    fields: dict[str, Any] | None = None,
) -> None:
    """Send operation ``kind`` to ``board``'s agent and print its result (exit 1 if it failed
    or was refused)."""
    from controller.board_history import user
    from controller.board_ops import OperationRefused, command_for, run_operation
    from controller.quarantine import get as quarantined

    command = command_for(kind, board, **(fields or {}))
    try:
        result = run_operation(
            client, settings, command, user(), timeout_s=timeout, lease_wait_s=wait, force=force
        )
    except OperationRefused as exc:
        raise fail(str(exc), 1) from None
    _report(board, kind, result, json_out)
    if not json_out and quarantined(client, board) is not None:
        err.print(
            f"{board} is still quarantined: farm board release {board} takes it back",
            highlight=False,
        )


def _plain_operation(kind: str, doc: str) -> None:
    """Register ``farm board KIND BOARD``: an operation that takes nothing but the board."""

    def command(
        board: BoardArg,
        timeout: TimeoutOpt = None,
        wait: WaitOpt = 0.0,
        force: ForceOpt = False,
        redis: RedisOpt = None,
        broker: BrokerOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        settings, client = _connect(redis, broker)
        _known(client, board)
        _operate(
            kind,
            board,
            settings,
            client,
            timeout=timeout,
            wait=wait,
            force=force,
            json_out=json_out,
        )

    command.__doc__ = doc
    command.__name__ = command.__qualname__ = kind.replace("-", "_")
    _command(kind)(command)


_plain_operation(
    "health-check",
    """Ask the DUT what it runs (name, profile, timestamp) and set the board's health from
    the answer; exit 1 if it fails.""",
)


@_command()
def flash(
    board: BoardArg,
    model: Annotated[
        str | None,
        typer.Option(help="Firmware model: kws01, vww01, ic01, ic02, ad01 (default: the board's)"),
    ] = None,
    build: Annotated[
        str | None, typer.Option(help="performance or energy (default: the board's)")
    ] = None,
    timeout: TimeoutOpt = None,
    wait: WaitOpt = 0.0,
    force: ForceOpt = False,
    redis: RedisOpt = None,
    broker: BrokerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Flash the image the agent's config names for MODEL and BUILD, then check the board;
    exit 1 with the agent's reason if it fails (no such image, the tool failed)."""
    from controller.board_ops import flash_timeout_s
    from farm.models import MODELS

    try:
        flash_timeout_s()
    except ValueError as exc:
        raise fail(str(exc)) from None
    settings, client = _connect(redis, broker)
    status = _known(client, board)
    model = model or status.get("model")
    build = build or status.get("build") or "performance"
    if model is None:
        raise fail(f"board {board} reports no firmware: give --model ({', '.join(MODELS)})")
    if model not in MODELS:
        raise fail(f"unknown model {model!r} (known: {', '.join(MODELS)})")
    if build not in ("performance", "energy"):
        raise fail(f"--build takes performance or energy, not {build!r}")
    _operate(
        "flash",
        board,
        settings,
        client,
        timeout=timeout,
        wait=wait,
        force=force,
        json_out=json_out,
        fields={"model": model, "build": build},
    )


_plain_operation(
    "power-cycle",
    """Cut the board's power and restore it with its configured method, then check it; exit
    1 if it fails (no power-cycle method, the command failed, no answer after).""",
)


@_command()
def reserve(
    board: BoardArg,
    duration: Annotated[
        str, typer.Option("--for", help="How long: 90s, 30m, 2h, 1h30m, 1d (up to 7 days)")
    ],
    note: Annotated[str, typer.Option(help="Why, for whoever looks at farm status")] = "",
    redis: RedisOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Hold BOARD for yourself: sweeps skip it (saying who holds it until when), runs already
    queued on it fail with that reason, scheduled checks leave it alone, and farm board console
    works on it. Reserving again moves the end. It ends when it expires, at farm board
    release, or when your open console disappears without closing."""
    from controller.board_history import user
    from controller.board_ops import busy_reason
    from controller.reservations import MAX_RESERVATION_S, ReservationError
    from controller.reservations import reserve as take

    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not 0 < seconds <= MAX_RESERVATION_S:
        raise fail(f"--for {duration!r}: a reservation lasts more than 0 s and up to 7 days")
    _, client = _connect(redis, None)
    _known(client, board)
    try:
        held = take(client, board, user(), seconds, note)
    except ReservationError as exc:
        raise fail(str(exc), 1) from None
    busy = busy_reason(client, board)
    if json_out:
        print(json.dumps({"board": board, **held.to_json(), "busy": busy}))
        return
    console.print(
        f"{board} {held.describe()} (in {_span(held.until - time.time())})", highlight=False
    )
    if busy:
        err.print(f"note: {board} is busy with {busy}; it goes on to its end", highlight=False)


@_command()
def release(
    board: BoardArg,
    timeout: TimeoutOpt = None,
    force: ForceOpt = False,
    redis: RedisOpt = None,
    broker: BrokerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Give BOARD back to the farm: end your reservation of it (anyone's with --force), and if
    it is quarantined or its health is bad, check it first: it returns to service only if the
    check passes (exit 1 if it fails: it stays out). A board in service: nothing to do."""
    from controller.board_history import Operation, record, user
    from controller.board_ops import OperationRefused, command_for, run_operation
    from controller.quarantine import get as quarantined
    from controller.quarantine import lift
    from controller.reservations import end, get

    settings, client = _connect(redis, broker)
    status = _known(client, board)
    who = user()
    reservation = get(client, board)
    if reservation is not None and reservation.holder != who and not force:
        raise fail(f"board {board} is {reservation.describe()}; --force to end it", 1)
    outcome: dict[str, Any] = {"board": board, "reservation_ended": False, "check": None}
    entry = quarantined(client, board)
    if entry is not None or status.get("health") == "bad":
        try:
            result = run_operation(
                client,
                settings,
                command_for("health-check", board),
                who,
                timeout_s=timeout,
                force=True,
            )
        except OperationRefused as exc:
            raise fail(str(exc), 1) from None
        outcome["check"] = result.to_json()
        if not result.ok:
            line = f"{board} stays out of service: the check failed: {result.reason}"
            _say(outcome, json_out, line, stream=err)
            raise typer.Exit(1)
        if entry is not None:
            lift(client, board)
        record(
            client,
            board,
            Operation("release", who, "ok", reason="back in service after a passing check"),
        )
        outcome["back_in_service"] = True
    lines = []
    if outcome.get("back_in_service"):
        lines.append(f"{board} passed its check and is back in service")
    if reservation is not None and end(client, reservation, who, "released"):
        outcome["reservation_ended"] = True
        lines.append(f"{board}: reservation by {reservation.holder} ended")
    if not lines:
        lines.append(f"{board} is in service and not reserved: nothing to release")
    _say(outcome, json_out, "; ".join(lines))


def _say(document: dict[str, Any], json_out: bool, line: str, *, stream: Any = console) -> None:
    """``line`` on ``stream``, or with ``--json`` the document with it as ``message``."""
    if json_out:
        print(json.dumps({**document, "message": line}))
    else:
        stream.print(line, highlight=False)


def _span(seconds: float) -> str:
    """``1h59m``, ``4m10s``, ``5s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@_command("console")
def console_command(
    board: BoardArg,
    eol: Annotated[
        str, typer.Option(help="What ends each line on the wire (the DUT's commands end in %)")
    ] = "%",
    ready: Annotated[
        str,
        typer.Option(
            help="The DUT's line saying it takes the next one: each line waits for it "
            "('' to send lines as they come)"
        ),
    ] = "m-ready",
    wait: WaitOpt = 0.0,
    redis: RedisOpt = None,
    broker: BrokerOpt = None,
) -> None:
    """An interactive line session with BOARD's DUT through its agent, while you hold its
    reservation: each line of stdin goes to the DUT (followed by --eol, once the DUT has
    printed --ready after the previous one), the DUT's lines come to stdout. End of input
    (Ctrl-D) closes it once the DUT has answered."""
    from controller.console_client import ConsoleError, console_grace_s, run_console
    from farm.messages import console_eol

    try:
        console_eol(eol)
        console_grace_s()
    except ValueError as exc:
        raise fail(f"farm board console: {exc}") from None
    if len(ready) > 64:
        raise fail("farm board console: --ready: at most 64 characters")
    settings, client = _connect(redis, broker)
    _known(client, board)
    try:
        reason, clean = run_console(
            client, settings, board, eol=eol, ready=ready or None, lease_wait_s=wait
        )
    except ConsoleError as exc:
        raise fail(str(exc), 1) from None
    err.print(f"console closed: {reason}", highlight=False)
    if not clean:
        raise typer.Exit(1)
