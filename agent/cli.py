"""``farm agent ...``: run the agent service, check its config, suggest device matches
(registered in ``farm.cli`` as the ``agent`` group).

Everything from ``agent`` (and pyserial) is imported inside the commands: a controller
install has the CLI without the agent extra.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from farm.catalog import get_dataset_spec
from farm.datasets import INDEX
from farm.yaml_config import ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig

agent_app = typer.Typer(
    help="The agent of one Pi: serve its boards (farm agent --config FILE), check, suggest.",
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


def _error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _needs_agent_extra(exc: ImportError) -> typer.Exit:
    _error(f"this command needs the agent extra (pip install 'tinyfarm[agent]'): {exc}")
    return typer.Exit(2)


def _load(path: Path) -> AgentConfig:
    """The validated config, or exit 2 with every ``FILE:LINE: field: message``."""
    try:
        from agent.config import load_agent_config
    except ImportError as exc:
        raise _needs_agent_extra(exc) from None
    try:
        return load_agent_config(path)
    except ConfigError as exc:
        _error(f"invalid agent config:\n{exc}")
        raise typer.Exit(2) from None


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
        _error("give --config FILE to serve the boards, or a command (check, suggest)")
        raise typer.Exit(2)
    cfg = _load(config)
    try:
        from agent.service import run_agent
    except ImportError as exc:
        raise _needs_agent_extra(exc) from None
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
        raise _needs_agent_extra(exc) from None
    try:
        ports = list_ports(sim or [])
    except DiscoveryError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    # Ports without USB identity (a PC's ttyS*, a Pi's UART) are not boards.
    usable = [p for p in ports if p.source != "system"]
    if not usable:
        _error(
            "no USB serial device found: plug the boards in (ls /dev/serial/by-id lists "
            "them), or pass --sim BOARDS_JSON for simulated ones"
        )
        raise typer.Exit(1)
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
        raise _needs_agent_extra(exc) from None
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
    console.print(table)

    errors += _file_problems(cfg, warnings)
    for line in warnings:
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    for line in errors:
        _error(line)
    if errors:
        err.print(f"{len(errors)} problem(s) in {config}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(
        f"ok: {resolved} devices of {len(cfg.boards)} board(s) found; serve them with: "
        f"farm agent --config {config}",
        highlight=False,
        soft_wrap=True,
    )


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
        for dataset in sorted({get_dataset_spec(m).id for m in models}):
            index = cfg.datasets / dataset / INDEX
            if not index.is_file():
                warnings.append(f"no {dataset} dataset: {index} is missing")
    broker = cfg.broker
    tls_files = [] if broker.tls is None else [broker.tls.ca, broker.tls.cert, broker.tls.key]
    errors += [f"broker TLS file {f} does not exist" for f in tls_files if f and not f.is_file()]
    try:
        broker.credentials()
    except ConfigError as exc:
        errors.append(str(exc))
    return errors
