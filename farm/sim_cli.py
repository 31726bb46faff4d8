"""``farm sim``: simulated boards on pseudo-terminals (registered in ``farm.cli``), with what
an agent needs to serve them (``OUT/agent.yaml`` and stand-in datasets), or ``--check``'s
scripted exchange with each board.

The agent config and the probe are the agent layer's, reached through
:func:`farm.sim_agent.load_support` (an entry point), so this module imports no agent code.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from farm.catalog import BenchmarkError, get_dataset_spec
from farm.cli_common import console, err, fail
from farm.datasets import official_index
from farm.logs import get_logger
from farm.models import MODELS
from farm.sim.config import SimConfig, generated_config, load_config
from farm.sim_agent import SimAgentSetup, SimAgentSupport, SimBoardSetup, load_support
from farm.sww_truth import official_text
from farm.yaml_config import ConfigError

log = get_logger("farm.sim_cli")


def sim(
    out: Annotated[Path, typer.Option(help="Directory for the pty symlinks and boards.json")],
    boards: Annotated[
        int | None, typer.Option(min=1, help="Number of boards (cycles the four models)")
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated models, one board each (kws01,vww01,ic01,ad01)"),
    ] = None,
    energy: Annotated[
        int, typer.Option(min=0, help="How many boards get an interface board and an LPM01A")
    ] = 0,
    config: Annotated[
        Path | None, typer.Option(help="YAML board config (overrides --boards/--models/--energy)")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice (latency, faults)")] = 0,
    transcripts: Annotated[
        bool, typer.Option(help="Record every byte both ways per device")
    ] = False,
    check: Annotated[
        bool, typer.Option(help="Run a short scripted exchange with each board, print it, exit")
    ] = False,
    agent_id: Annotated[str, typer.Option(help="Agent id in the OUT/agent.yaml written")] = "sim",
    broker: Annotated[
        str, typer.Option(envvar="FARM_MQTT_URL", help="MQTT broker url in OUT/agent.yaml")
    ] = "mqtt://127.0.0.1:1883",
    dataset_limit: Annotated[
        str | None,
        typer.Option(
            help="Synthesize only N rows of each dataset, stratified (every class in any N "
            "of at least the class count): N for all, or per dataset, e.g. kws01=20,ad01=8"
        ),
    ] = None,
    dataset_windows: Annotated[
        int | None,
        typer.Option(min=1, max=196, help="ad01 files this many windows long (default 196)"),
    ] = None,
) -> None:
    """Start simulated boards on pseudo-terminals and write OUT/boards.json.

    Also writes what an agent needs to serve them: OUT/agent.yaml (run `farm agent --config
    OUT/agent.yaml`) and the stand-in datasets in OUT/datasets (kept across runs; only a
    missing or incomplete one is written). Runs until interrupted (Ctrl-C), then removes its
    ptys, symlinks, boards.json and agent.yaml.
    """
    try:
        cfg = _sim_config(config, boards, models, energy, seed)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    try:
        limits = _dataset_limits(dataset_limit)
    except ValueError as exc:
        raise fail(f"--dataset-limit: {exc}") from None
    setup = None if check else _agent_setup(agent_id, broker, limits, dataset_windows)
    try:
        status = asyncio.run(_run_sim(cfg, out, transcripts, check, setup))
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = 0
    raise typer.Exit(status)


def _dataset_limits(text: str | None) -> dict[str, int] | None:
    """``--dataset-limit``: rows per dataset id (every dataset for a bare N)."""
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        # sww01's truth files are never cut.
        specs = (get_dataset_spec(m) for m in MODELS)
        return dict.fromkeys((s.id for s in specs if not s.streamed), int(text))
    limits: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"expected N or ID=N,ID=N with N >= 1, not {part!r}")
        try:
            limits[get_dataset_spec(name.strip()).id] = int(value)
        except BenchmarkError as exc:
            raise ValueError(str(exc)) from None
    return limits


def _sim_config(
    config: Path | None, boards: int | None, models: str | None, energy: int, seed: int
) -> SimConfig:
    if config is not None:
        return load_config(config)
    listed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    count = boards if boards is not None else (None if listed else 4)
    total = count if count is not None else len(listed or [])
    if energy > total:
        raise ConfigError(f"--energy {energy} is more than the {total} boards")
    return generated_config(count, listed, energy, seed)


@dataclass(frozen=True, slots=True)
class _AgentSetup:
    """What `farm sim` writes for an agent besides boards.json."""

    agent_id: str
    broker: str
    dataset_limits: dict[str, int] | None
    dataset_windows: int | None
    support: SimAgentSupport | None
    """The agent layer's part: the agent config (none without the agent layer)."""


def _agent_setup(
    agent_id: str, broker: str, limits: dict[str, int] | None, windows: int | None
) -> _AgentSetup:
    """Check the agent options before any board starts."""
    try:
        support = load_support()
    except ImportError as exc:
        err.print(f"[yellow]warning:[/] no agent.yaml: {exc}", highlight=False, soft_wrap=True)
        return _AgentSetup(agent_id, broker, limits, windows, None)
    try:
        support.check_options(agent_id, broker)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return _AgentSetup(agent_id, broker, limits, windows, support)


async def _run_sim(
    cfg: SimConfig, out: Path, transcripts: bool, check: bool, setup: _AgentSetup | None
) -> int:
    from farm.sim.server import SimFarm  # keeps `farm --help` light

    # SIGTERM (systemd, CI, kill) must clean up like Ctrl-C: cancel, so `async with` exits.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    sim_farm = SimFarm(cfg, out, transcripts=transcripts)
    if setup is not None:
        # Before the boards start: synthesis is CPU-bound and would stall their serial
        # timing; every board can be flashed with every model, so each needs its dataset.
        try:
            _write_datasets(
                sim_farm.out / "datasets", MODELS, setup.dataset_limits, setup.dataset_windows
            )
        except OSError as exc:
            err.print(f"[bold red]error:[/] cannot write the datasets: {exc}", highlight=False)
            return 2
    async with sim_farm:
        document = json.loads(sim_farm.boards_json.read_text())
        _print_boards(document["boards"], sim_farm.boards_json)
        if check:
            return await _check_boards(document["boards"])
        agent_yaml = sim_farm.out / "agent.yaml"
        if setup is not None and setup.support is not None:
            agent_setup = _sim_agent_setup(document, cfg, sim_farm.out, setup)
            _write_agent_yaml(agent_yaml, setup.support, agent_setup)
            console.print(f"agent config: {agent_yaml}", highlight=False, soft_wrap=True)
            console.print(
                f"serve these boards with: farm agent --config {agent_yaml}",
                highlight=False,
                soft_wrap=True,
            )
        err.print("simulated boards running; Ctrl-C to stop", highlight=False)
        try:
            await asyncio.Event().wait()
        finally:
            # Like boards.json, it describes running boards (their control socket).
            agent_yaml.unlink(missing_ok=True)
    return 0


def _write_datasets(
    root: Path, models: Iterable[str], limits: dict[str, int] | None, windows: int | None
) -> None:
    """Synthesize the datasets of ``models`` under ``root``, except those an earlier run
    already wrote completely (their index is written last, so its presence means every
    file is there)."""
    from farm.dataset_synth import synthesize

    limits = limits or {}
    wanted = sorted({get_dataset_spec(m).id for m in models})
    missing = [d for d in wanted if not _dataset_complete(root, d, limits.get(d), windows)]
    if not missing:
        log.info("datasets_present", root=str(root), datasets=",".join(wanted))
        return
    err.print(
        f"writing the {', '.join(missing)} dataset(s) to {root}"
        + (
            f" (rows: {', '.join(f'{d} {limits[d]}' for d in missing if d in limits)})"
            if limits
            else ""
        ),
        highlight=False,
        soft_wrap=True,
    )
    started = time.perf_counter()
    results = synthesize(root, missing, limit=limits, stratify=True, windows=windows)
    log.info(
        "datasets_written",
        root=str(root),
        datasets=",".join(missing),
        files=sum(r.files for r in results),
        bytes=sum(r.bytes for r in results),
        seconds=round(time.perf_counter() - started, 2),
    )


def _dataset_complete(root: Path, dataset: str, limit: int | None, windows: int | None) -> bool:
    """Whether ``root/dataset`` holds the full official set, or the subset of ``limit`` rows
    asked for, with files of the size asked for (ad01's ``windows``)."""
    from farm.dataset_synth import subset_index

    spec = get_dataset_spec(dataset)
    try:
        present = (root / dataset / spec.index).read_text()
    except OSError:
        return False
    if spec.streamed:
        return present == official_text(spec.index)
    if present != official_index(dataset) and (
        limit is None or present != subset_index(dataset, limit, stratify=True)[0]
    ):
        return False
    if spec.window_bytes is None or spec.stride is None:
        return True
    size = spec.window_bytes + ((windows or spec.synth_windows or 1) - 1) * spec.stride
    first = present.split(",", 1)[0]
    try:
        return (root / dataset / first).stat().st_size == size
    except OSError:
        return False


def _sim_agent_setup(
    document: dict[str, Any], cfg: SimConfig, out: Path, setup: _AgentSetup
) -> SimAgentSetup:
    """What an agent serving every board of a running ``farm sim`` needs: the boards' serial
    numbers from boards.json, flashing and power cycles through its control socket."""
    from farm.sim.control import flash_command, power_cycle_command
    from farm.sim.firmware import image_path

    control = Path(document["control"])
    configured = {b.id: b for b in cfg.boards}
    boards = []
    for entry in document["boards"]:
        wired = entry["interface"] is not None and entry["monitor"] is not None
        builds = ("performance", "energy") if wired else ("performance",)
        boards.append(
            SimBoardSetup(
                id=entry["id"],
                model=entry["model"],
                dut_serial=entry["dut"]["usb"]["serial"],
                interface_serial=entry["interface"]["usb"]["serial"] if wired else None,
                monitor_serial=entry["monitor"]["usb"]["serial"] if wired else None,
                images={m: {b: image_path(out, m, b) for b in builds} for m in MODELS},
                baud=configured[entry["id"]].baud,
            )
        )
    return SimAgentSetup(
        agent_id=setup.agent_id,
        broker=setup.broker,
        datasets=out / "datasets",
        journal=out / "agent-journal.sqlite",
        boards_json=out / "boards.json",
        flash=flash_command(control),
        power_cycle=power_cycle_command(control),
        boards=tuple(boards),
    )


def _write_agent_yaml(path: Path, support: SimAgentSupport, setup: SimAgentSetup) -> None:
    header = (
        "Written by `farm sim` for the simulated boards it serves; removed when it stops.\n"
        f"Serve them with: farm agent --config {path}"
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(support.config_yaml(setup, header))
    os.replace(tmp, path)  # whoever waits for the file never reads half of it


def _print_boards(boards: list[dict[str, Any]], path: Path) -> None:
    table = Table(title=f"simulated boards ({path})")
    for column in ("board", "model", "firmware", "DUT port", "baud", "interface", "monitor"):
        table.add_column(column, overflow="fold")
    for b in boards:
        table.add_row(
            b["id"],
            b["model"],
            b["firmware"],
            b["dut"]["path"],
            str(b["dut"]["baud"]),
            b["interface"]["path"] if b["interface"] else "-",
            b["monitor"]["path"] if b["monitor"] else "-",
        )
    console.print(table)


async def _check_boards(boards: list[dict[str, Any]]) -> int:
    try:
        probe = load_support().prober()
    except ImportError as exc:
        hint = f"--check needs the agent extra (pip install 'tinyfarm[agent]'): {exc}"
        err.print(escape(hint), style="red", highlight=False, soft_wrap=True)
        return 2
    results = await asyncio.gather(*(probe(b) for b in boards))
    table = Table(title="scripted exchange: name, profile, db load, infer (energy: LPM01A window)")
    for column in ("board", "ok", "model", "load s", "infer µs", "µJ/inf", "results / error"):
        table.add_column(column, overflow="fold")
    for r in results:
        detail = ", ".join(f"{v:.3f}" for v in r.results) if r.ok else r.error
        table.add_row(
            r.board,
            "yes" if r.ok else "[red]NO",
            r.model,
            f"{r.load_s:.2f}",
            "-" if r.elapsed_us is None else str(r.elapsed_us),
            "-" if r.energy_uj is None else f"{r.energy_uj:.1f}",
            detail,
        )
    console.print(table)
    return 0 if all(r.ok for r in results) else 1
