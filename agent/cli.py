"""The agent's commands: ``farm agent ...`` (serve a Pi's boards, check its config, suggest
device matches) and ``farm run`` (one benchmark mode on one board, no farm around it).

Everything from ``agent`` beyond its pydantic config (and pyserial) is imported inside the
commands, so a controller install without the agent extra still lists them and each says
which extra it needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.markup import escape
from rich.table import Table

from farm.catalog import get_dataset_spec
from farm.cli_common import console, err, error, fail, needs_extra
from farm.messages import Mode, RunScript
from farm.yaml_config import ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig, BoardConfig
    from agent.one_board import RunRequest
    from agent.runner import RunSettings
    from farm.run_output import RunFolder

agent_app = typer.Typer(
    help="The agent of one Pi: serve its boards (farm agent --config FILE), check, suggest.",
    add_completion=False,
)


def _load(path: Path) -> AgentConfig:
    """The validated config, or exit 2 with every ``FILE:LINE: field: message``."""
    try:
        from agent.config import load_agent_config
    except ImportError as exc:
        raise needs_extra("agent", exc) from None
    try:
        return load_agent_config(path)
    except ConfigError as exc:
        raise fail(f"invalid agent config:\n{exc}") from None


def register(app: typer.Typer) -> None:
    """Add the agent's commands to the ``farm`` command line (the ``tinyfarm.cli`` entry
    point ``agent``)."""
    app.command()(run)
    app.add_typer(agent_app, name="agent")


ConfigOption = Annotated[Path, typer.Option(help="The agent config (YAML)")]


@agent_app.callback(invoke_without_command=True)
def agent(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="The agent config (YAML): serve its boards")
    ] = None,
) -> None:
    """Serve this Pi's boards: connect to the broker and run the jobs it sends.

    Without a command, runs the agent service until it stops; its exit status is the
    service's.
    """
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        raise fail("give --config FILE to serve the boards, or a command (check, suggest)")
    cfg = _load(config)
    try:
        # Read once now: a missing password file is a set-up error, not a broker outage to
        # retry for ever.
        cfg.broker.credentials()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    try:
        from agent.service import run_agent
    except ImportError as exc:
        raise needs_extra("agent", exc) from None
    try:
        status = asyncio.run(run_agent(cfg))
    except KeyboardInterrupt:
        status = 130
    raise typer.Exit(status)


@agent_app.command()
def suggest(
    sim: Annotated[
        list[Path] | None,
        typer.Option(help="Also list the devices of this `farm sim` boards.json (repeatable)"),
    ] = None,
) -> None:
    """Print a ready-to-paste YAML match for every USB serial device (and simulated one).

    Each matches by USB serial number, the one field that tells identical boards apart.
    """
    try:
        from agent.discovery import DiscoveryError, list_ports
        from agent.discovery import suggest as snippets
    except ImportError as exc:
        raise needs_extra("agent", exc) from None
    try:
        ports = list_ports(sim or [])
    except DiscoveryError as exc:
        raise fail(str(exc)) from None
    # Ports without USB identity (a PC's ttyS*, a Pi's UART) are not boards.
    usable = [p for p in ports if p.source != "system"]
    if not usable:
        raise fail(
            "no USB serial device found: plug the boards in (ls /dev/serial/by-id lists "
            "them), or pass --sim BOARDS_JSON for simulated ones",
            1,
        )
    typer.echo("# Paste each match under dut:, interface: or monitor: of a board in agent.yaml.")
    typer.echo(snippets(usable), nl=False)


@agent_app.command()
def check(config: ConfigOption) -> None:
    """Validate the config and find every board's devices, firmware images and datasets.

    Exit status: 0 when everything is found, 1 when something is not (each named), 2 when
    the config itself is invalid.
    """
    cfg = _load(config)
    try:
        from agent.discovery import DiscoveryError, MatchError, list_ports, resolve, sim_ports
    except ImportError as exc:
        raise needs_extra("agent", exc) from None
    errors: list[str] = []
    warnings: list[str] = []

    ports = list_ports()
    for boards_json in cfg.sim_boards:
        try:
            ports += sim_ports(boards_json)
        except DiscoveryError as exc:
            errors.append(str(exc))

    table = Table(title=f"devices of {config}")
    for column in ("board", "role", "match", "device", "status"):
        table.add_column(column, overflow="fold")
    owners: dict[str, str] = {}
    resolved = 0
    for board in cfg.boards:
        for role, device in board.devices():
            try:
                port = resolve(device.match, ports)
            except MatchError as exc:
                errors.append(f"board {board.id} {role}: {exc}")
                table.add_row(board.id, role, device.match.describe(), "-", "[red]ERROR")
                continue
            where = f"board {board.id} {role}"
            same = owners.setdefault(os.path.realpath(port.device), where)
            if same != where:
                errors.append(f"{where} and {same} match the same device {port.brief()}")
            resolved += 1
            table.add_row(board.id, role, device.match.describe(), port.path, "ok")
        resolved += _check_js220(board, table, errors)
    console.print(table)

    errors += _file_problems(cfg, warnings)
    for line in warnings:
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    for line in errors:
        error(line)
    if errors:
        err.print(f"{len(errors)} problem(s) in {config}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(
        f"ok: {resolved} devices of {len(cfg.boards)} board(s) found; serve them with: "
        f"farm agent --config {config}",
        highlight=False,
        soft_wrap=True,
    )


def _check_js220(board: BoardConfig, table: Table, errors: list[str]) -> int:
    """Find the board's JS220 monitor, if it has one (a USB device the joulescope package
    lists, not a serial port); 1 if found."""
    monitor = board.monitor
    if monitor is None or monitor.kind != "js220":
        return 0
    serial = monitor.js220_serial
    what = f"js220 serial={serial}" if serial else "js220 (the only one)"
    try:
        from agent.js220_client import MonitorUnavailable, find_js220
    except ImportError as exc:  # numpy: the js220 extra
        errors.append(f"board {board.id} monitor: needs the js220 extra ({exc})")
        table.add_row(board.id, "monitor", what, "-", "[red]ERROR")
        return 0
    try:
        device = find_js220(serial)
    except MonitorUnavailable as exc:
        errors.append(f"board {board.id} monitor: {exc}")
        table.add_row(board.id, "monitor", what, "-", "[red]ERROR")
        return 0
    table.add_row(board.id, "monitor", what, str(device), "ok")
    return 1


def _file_problems(cfg: AgentConfig, warnings: list[str]) -> list[str]:
    """Errors (returned) and warnings (appended) about the files the config names."""
    errors: list[str] = []
    if not cfg.datasets.is_dir():
        errors.append(
            f"dataset root {cfg.datasets} does not exist (farm dataset synth --out "
            f"{cfg.datasets} writes a stand-in one)"
        )
    models: set[str] = set()
    for board in cfg.boards:
        firmware = board.firmware
        for model, builds in firmware.images.items():
            models.add(model)
            for build, image in builds.items():
                if not image.is_file():
                    errors.append(
                        f"board {board.id}: firmware image {model} {build}: {image} does not exist"
                    )
        if firmware.images and firmware.flash is None:
            warnings.append(f"board {board.id}: firmware images but no flash command")
    if cfg.datasets.is_dir():
        # Boards can be flashed with these models, and a run of one needs its dataset.
        for spec in sorted({get_dataset_spec(m) for m in models}, key=lambda d: d.id):
            index = cfg.datasets / spec.id / spec.index
            if not index.is_file():
                warnings.append(f"no {spec.id} dataset: {index} is missing")
    broker = cfg.broker
    tls_files = [] if broker.tls is None else [broker.tls.ca, broker.tls.cert, broker.tls.key]
    errors += [f"broker TLS file {f} does not exist" for f in tls_files if f and not f.is_file()]
    try:
        broker.credentials()
    except ConfigError as exc:
        errors.append(str(exc))
    return errors


def run(
    benchmark: Annotated[
        str,
        typer.Option(help="kws01, vww01, ic01, ic02, ad01, sww01 (or kws, vww, ic, ic2, ad, sww)"),
    ],
    mode: Annotated[
        str, typer.Option(help="performance, accuracy, energy or latency (supplemental)")
    ],
    dataset: Annotated[
        Path,
        typer.Option(
            envvar="FARM_DATASETS",
            help="Dataset root: <root>/<id>/y_labels.csv (sww01: <root>/sww01/<truth file>)",
        ),
    ],
    port: Annotated[
        str | None, typer.Option(help="The DUT's serial port (performance, accuracy, latency)")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where run folders are created")] = Path("sessions"),
    baud: Annotated[
        int | None, typer.Option(help="DUT baud (default: the benchmark's reference baud)")
    ] = None,
    interface: Annotated[
        str | None, typer.Option(help="Energy mode: the interface board's port")
    ] = None,
    monitor: Annotated[
        str | None,
        typer.Option(
            help="Energy mode: the LPM01A's port, or js220 (the only one) or js220:SERIAL"
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N samples (not valid for submission)")
    ] = None,
    min_queries: Annotated[
        int, typer.Option(min=1, help="Latency mode: minimum query count")
    ] = 1024,
    min_duration: Annotated[
        float, typer.Option(min=0, help="Latency mode: minimum duration, s")
    ] = 60.0,
    sim_board: Annotated[
        str | None, typer.Option(help="BOARDS_JSON:ID (the ports of a simulated board)")
    ] = None,
    alt: Annotated[bool, typer.Option(help="ad01: use the smaller y_labels_alt.csv set")] = False,
    resume: Annotated[
        Path | None, typer.Option(help="Accuracy: continue the interrupted run in this folder")
    ] = None,
    truth: Annotated[
        str | None,
        typer.Option(help="sww01: the truth file in <dataset>/sww01 (sww_long_test.json)"),
    ] = None,
    script: Annotated[
        Path | None,
        typer.Option(
            help="A test script in the official runner's grammar for this mode: the "
            "benchmark's entry runs as written (N too)"
        ),
    ] = None,
    min_window_s: Annotated[float, typer.Option(hidden=True)] = 10.0,
    max_window_s: Annotated[float, typer.Option(hidden=True)] = 30.0,
    calibration_s: Annotated[float, typer.Option(hidden=True)] = 0.5,
) -> None:
    """Run one benchmark mode on one board and write the official output files.

    Everything is checked before any input is sent: the benchmark and mode, every dataset file
    and its size, and the model the DUT reports. Ctrl-C leaves the run folder consistent and
    marked INCOMPLETE.
    """
    try:
        from agent.energy_monitor import MonitorTarget
        from agent.one_board import RunInputError, RunRequest, prepare, run_one_board
        from agent.runner import RunSettings
        from agent.serial_link import PortNotFound
    except ImportError as exc:
        raise fail(f"farm run needs the agent and scoring extras: {exc}") from None
    if sim_board is not None:
        port, baud, interface, monitor = _sim_ports(sim_board, mode, port, baud, interface, monitor)
    settings = RunSettings(
        min_window_s=min_window_s,
        max_window_s=max_window_s,
        calibration_s=calibration_s,
        min_queries=min_queries,
        min_duration_s=min_duration,
        limit=limit,
    )
    if script is not None:
        settings, truth, run_script = _user_script(script, benchmark, mode, settings, truth)
    request = RunRequest(
        benchmark=benchmark,
        mode=cast(Mode, mode),  # prepare() refuses an unknown mode, naming the known ones
        dataset=dataset,
        out=out,
        port=port,
        baud=baud,
        interface=interface,
        monitor=MonitorTarget.parse(monitor) if monitor else None,
        settings=settings,
        alt=alt,
        resume=resume,
        truth=truth,
        script=run_script if script is not None else None,
    )
    try:
        # The arguments first: a bad one is one line, not a progress bar and then the line.
        prepare(request)
    except RunInputError as exc:
        raise fail(str(exc)) from None
    started: list[RunFolder] = []
    try:
        folder = asyncio.run(_run_with_progress(request, run_one_board, started))
    except RunInputError as exc:
        raise fail(str(exc)) from None
    except PortNotFound as exc:
        if started:
            err.print(f"[bold red]run failed:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        raise fail(str(exc)) from None  # before any input was sent: a set-up problem
    except KeyboardInterrupt:
        err.print(
            "interrupted (a run folder, if one was made, is marked INCOMPLETE)", highlight=False
        )
        raise typer.Exit(130) from None
    except Exception as exc:
        err.print(
            f"[bold red]run failed:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None
    results = (folder.path / "results.txt").read_text()
    console.print(results.rstrip(), highlight=False, soft_wrap=True)
    for problem in folder.problems:
        err.print(f"[yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
    console.print(f"run folder: {folder.path}", highlight=False, soft_wrap=True)


async def _run_with_progress(
    request: RunRequest,
    run_one_board: Callable[..., Awaitable[RunFolder]],
    started_folders: list[RunFolder],
) -> RunFolder:
    """Run with a progress bar; ``started_folders`` gets the run folder once inputs may be
    sent."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[eta]}"),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(f"{request.benchmark} {request.mode}", total=None, eta="")

        def started(folder: RunFolder, total: int | None) -> None:
            started_folders.append(folder)
            bar.update(task, total=total)
            bar.console.print(f"run folder: {folder.path}", highlight=False, soft_wrap=True)

        def progress(done: int, total: int | None, eta: float | None) -> None:
            text = "" if eta is None else f"ETA {eta:,.0f} s (wire model)"
            bar.update(task, completed=done, total=total, eta=text)

        return await run_one_board(request, progress=progress, on_start=started)


def _user_script(
    path: Path, benchmark: str, mode: str, settings: RunSettings, truth: str | None
) -> tuple[RunSettings, str | None, RunScript]:
    """``--script``: the benchmark's entry of the file, and the settings and truth file it
    gives the run (a performance or energy loop sets the windows; a stream its truth)."""
    from farm.catalog import BenchmarkError, get_benchmark
    from farm.messages import RunOptions
    from farm.scripts import ScriptError, load_test_script

    if mode == "latency":
        raise fail(
            "latency mode runs the farm's own query loop; --script applies to "
            "performance, accuracy and energy mode"
        )
    try:
        bench = get_benchmark(benchmark)
        script = load_test_script(path, mode)
    except (BenchmarkError, ScriptError) as exc:
        raise fail(str(exc)) from None
    try:
        options = script.apply(RunOptions(truth=truth, windows=settings.windows), bench.id, mode)
    except ScriptError as exc:
        raise fail(str(exc)) from None
    if options.script is None:
        raise fail(f"{path} has no entry for {bench.id} (it names {', '.join(script.entries)})")
    return dataclasses.replace(settings, windows=options.windows), options.truth, options.script


def _sim_ports(
    spec: str,
    mode: str,
    port: str | None,
    baud: int | None,
    interface: str | None,
    monitor: str | None,
) -> tuple[str | None, int | None, str | None, str | None]:
    """Fill the ports from ``BOARDS_JSON:ID`` (a `farm sim` board)."""
    path, _, board_id = spec.rpartition(":")
    if not path or not board_id:
        raise fail(f"--sim-board takes BOARDS_JSON:ID, not {spec!r}")
    try:
        boards = json.loads(Path(path).read_text())["boards"]
    except (OSError, ValueError, KeyError) as exc:
        raise fail(f"{path}: cannot read the boards file: {exc}") from None
    board = next((b for b in boards if b["id"] == board_id), None)
    if board is None:
        known = ", ".join(b["id"] for b in boards)
        raise fail(f"{path}: no board {board_id!r} (boards: {known})")
    if mode == "energy":
        if not board.get("interface") or not board.get("monitor"):
            raise fail(f"board {board_id} has no interface board and energy monitor")
        return (
            port,
            baud,
            interface or board["interface"]["path"],
            monitor or board["monitor"]["path"],
        )
    return port or board["dut"]["path"], baud or board["dut"]["baud"], interface, monitor
