"""``farm run``: one benchmark mode on one board, without a controller, ending in the
official output files. Everything is checked before a byte of input reaches the board:
the benchmark and mode, the dataset (every file and size), and the model the DUT reports."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.dut_client import DirectChannel, DutClient
from agent.energy_monitor import EnergyMonitor, MonitorTarget, open_monitor
from agent.interface_client import InterfaceClient
from agent.runner import Mode, Progress, Runner, RunSettings, StreamTarget
from agent.serial_link import SerialLink
from farm.catalog import Benchmark, BenchmarkError, get_benchmark
from farm.datasets import Dataset, DatasetError, InferenceInput, load_dataset
from farm.logs import get_logger
from farm.messages import RunScript
from farm.protocol.interface import HOST_BAUD as INTERFACE_BAUD
from farm.run_output import RunFolder
from farm.script_grammar import Script
from farm.scripts import run_script, script_log_lines, script_subset
from farm.sww_truth import TruthError, TruthFile, dataset_truth

log = get_logger("agent.one_board")


class RunInputError(Exception):
    """The request cannot run: bad benchmark, mode, dataset, ports or DUT model. Raised
    before any input is sent to the board (``farm run`` exits 2)."""


@dataclass
class RunRequest:
    """Everything ``farm run`` was asked to do."""

    benchmark: str
    mode: Mode
    dataset: Path
    out: Path
    port: str | None = None
    baud: int | None = None
    interface: str | None = None
    monitor: MonitorTarget | None = None
    """Energy mode: the LPM01A (its serial port) or the JS220 (its USB serial number)."""
    settings: RunSettings = field(default_factory=RunSettings)
    alt: bool = False
    latency_s: float | None = None
    """Per-inference time the client may assume before measuring (else the 30 s limit)."""
    resume: Path | None = None
    """An interrupted accuracy run's folder to continue instead of starting over."""
    truth: str | None = None
    """sww01: the truth file in ``<dataset>/sww01/`` (default: the official script's,
    ``sww_long_test.json``)."""
    script: RunScript | None = None
    """A user's test script for the benchmark and mode (default: the farm's)."""


def request_script(request: RunRequest, bench: Benchmark) -> Script:
    """The script the request runs: the user's, as written, or the farm's."""
    return run_script(bench, request.mode, request.script, request.truth)


@dataclass
class Links:
    """The open ports of a run and the clients on them."""

    dut: DutClient
    links: list[SerialLink]
    monitor: EnergyMonitor | None = None
    interface: InterfaceClient | None = None
    """Energy mode: the interface board (sww01 plays its wav through it)."""

    async def close(self) -> None:
        """Stop the monitor (if any) and close every port."""
        await _close(self.links, self.monitor)


async def _close(links: list[SerialLink], monitor: EnergyMonitor | None) -> None:
    if monitor is not None:
        with contextlib.suppress(Exception):  # best effort: the board may be gone
            await monitor.stop()
            await monitor.teardown()
        await monitor.close()
    for link in links:
        await link.close()


def prepare(
    request: RunRequest, *, ports: bool = True
) -> tuple[Benchmark, Dataset | TruthFile, list[InferenceInput]]:
    """Check the benchmark, the mode and the dataset (and with ``ports`` that the request
    names the ports the mode needs), and list the run's inputs; nothing is opened yet.
    sww01's dataset is its truth file, and it has no inputs to download."""
    try:
        bench = get_benchmark(request.benchmark)
    except BenchmarkError as exc:
        raise RunInputError(str(exc)) from None
    if request.mode not in ("performance", "accuracy", "energy", "latency"):
        raise RunInputError(
            f"unknown mode {request.mode!r} (known: performance, accuracy, energy, latency)"
        )
    try:
        bench.script(_mode(request))
    except BenchmarkError as exc:
        raise RunInputError(str(exc)) from None
    if request.truth is not None and not bench.streamed:
        raise RunInputError(f"--truth names an sww01 truth file; {bench.id} has none")
    if ports and request.mode == "energy" and not (request.interface and _has_monitor(request)):
        raise RunInputError(
            "energy mode needs --interface PORT and --monitor PORT (an LPM01A's port, or js220)"
        )
    if request.script is not None and request.mode == "latency":
        raise RunInputError(
            "latency mode runs the farm's own query loop; a test script applies to "
            "performance, accuracy and energy mode"
        )
    if request.resume is not None and request.mode != "accuracy":
        raise RunInputError("only accuracy runs can be resumed (the others are timed windows)")
    if ports and request.mode != "energy" and not request.port:
        raise RunInputError(f"{request.mode} mode needs --port PATH (the DUT's serial port)")
    if bench.streamed:
        if request.settings.limit is not None:
            raise RunInputError("--limit does not apply to sww01: a run is one whole stream")
        try:
            truth = dataset_truth(request.dataset, request.truth or bench.dataset.index)
        except TruthError as exc:
            raise RunInputError(str(exc)) from None
        return bench, truth, []
    try:
        dataset = load_dataset(request.dataset, bench, alt=request.alt)
        # Latency mode rotates through the performance inputs (rows 1-5). A run cut short
        # with --limit may use a dataset smaller than the script's loop.
        limit = None if request.mode == "latency" else request.settings.limit
        script = request_script(request, bench)
        inputs = dataset.inputs(_mode(request), limit=limit, script=script)
    except DatasetError as exc:
        raise RunInputError(str(exc)) from None
    return bench, dataset, inputs


async def connect(request: RunRequest, bench: Benchmark, opened: SerialLink | None = None) -> Links:
    """Open the ports, power and set up the energy path, and check the DUT's model.
    ``opened``: the DUT's port at the request's baud, already open and in step (a health
    check just resynced and asked it), used as it is."""
    links: list[SerialLink] = []
    monitor: EnergyMonitor | None = None
    try:
        if request.mode == "energy":
            assert request.interface is not None
            assert request.monitor is not None
            monitor = await open_monitor(request.monitor)
            links.append(await SerialLink.open(request.interface, INTERFACE_BAUD))
            interface = InterfaceClient(links[0], dut_baud=request.baud or bench.baud("energy"))
            await monitor.configure(round(bench.supply_voltage * 1000))
            await monitor.start()
            await interface.resync()  # setbaud: flushes the DUT's boot banner
            dut = interface.dut(bench.model, request.latency_s)
        else:
            interface = None
            assert request.port is not None
            link = opened or await SerialLink.open(
                request.port, request.baud or bench.baud(_mode(request))
            )
            links.append(link)
            dut = DutClient(DirectChannel(link), bench.model, request.latency_s)
            if opened is None:
                await dut.resync()
        _, model = await dut.profile()
        if not bench.accepts_firmware(model):
            raise RunInputError(
                f"the DUT reports model {model!r}; benchmark {bench.id} needs firmware for "
                f"{', '.join(bench.firmware_models)} (flash it, or pick the matching benchmark)"
            )
        # The performance build answers `timestamp` with a lap line, the energy build with a
        # pin pulse only: timed windows need the build that matches the mode.
        energy_build = await dut.timestamp() is None
        if energy_build != (request.mode == "energy"):
            have, need = ("energy", "performance") if energy_build else ("performance", "energy")
            raise RunInputError(
                f"the DUT runs the {have} firmware build; {request.mode} mode needs the {need} "
                "build (flash it)"
            )
        return Links(dut, links, monitor, interface)
    except BaseException:
        await _close(links, monitor)
        raise


def stream_target(links: Links, dataset: Dataset | TruthFile) -> StreamTarget | None:
    """sww01's stream (the truth file's first wav, as the official ``stream`` step plays it)
    through the run's interface board; ``None`` for the other benchmarks."""
    if not isinstance(dataset, TruthFile):
        return None
    if links.interface is None:
        raise RunInputError("sww01 streams through the interface board: energy mode only")
    return StreamTarget(links.interface, dataset.name, dataset.entries[0])


def _has_monitor(request: RunRequest) -> bool:
    # A JS220 without a serial number is the only one connected; an LPM01A needs its port.
    target = request.monitor
    return target is not None and (target.kind == "js220" or bool(target.address))


def _mode(request: RunRequest) -> str:
    # Latency mode talks to the performance firmware at its baud.
    return "performance" if request.mode == "latency" else request.mode


async def run_one_board(
    request: RunRequest,
    *,
    progress: Progress | None = None,
    on_start: Callable[[RunFolder, int | None], None] | None = None,
) -> RunFolder:
    """Run the request to the end; return the finished run folder.

    Raises :class:`RunInputError` before anything is sent on bad input. On Ctrl-C
    (cancellation) or any failure after the start, the folder is left consistent and marked
    incomplete, and the exception propagates.
    """
    bench, dataset, inputs = prepare(request)
    identity = {
        "benchmark": bench.id,
        "mode": request.mode,
        "dataset": str(dataset.index_path.resolve()),
        "alt": request.alt,
        "limit": request.settings.limit,
        "script": request.script.sha256 if request.script else None,
    }
    if request.resume is not None:
        try:
            RunFolder.check_resumable(request.resume, identity)
        except (OSError, ValueError, KeyError) as exc:
            raise RunInputError(f"cannot resume {request.resume}: {exc}") from None
    links = await connect(request, bench)
    if request.resume is not None:
        folder = RunFolder.reopen(request.resume, bench, request.mode, request.settings)
        request.settings.start_seq = folder.next_seq
    else:
        folder = RunFolder.create(request.out, bench, request.mode, request.settings, identity)
    try:
        script = request_script(request, bench)
        runner = Runner(
            links.dut,
            inputs,
            request.mode,
            script_counts(request.mode, script),
            request.settings,
            monitor=links.monitor,
            progress=progress,
            stream=stream_target(links, dataset),
            sized=script.sized,
        )
        if on_start is not None:
            on_start(folder, expected_samples(request, inputs))
        folder.log(f"benchmark {bench.id}, mode {request.mode}, dataset {dataset.folder}")
        for line in script_log_lines(bench, _mode(request), script):
            folder.log(line)
        async for sample in runner.run():
            folder.add_sample(sample)
        folder.finish(runner.info, dataset)
        if isinstance(dataset, Dataset) and (
            part := script_subset(request.mode, script, len(dataset.rows))
        ):
            folder.add_problem(part)
    except BaseException as exc:
        folder.mark_incomplete(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        raise
    finally:
        await links.close()
    return folder


def script_counts(mode: str, script: Script) -> tuple[int, int]:
    """``(N, W)`` of the run's ``infer`` (latency mode: one query at a time, no warmups)."""
    return (1, 0) if mode == "latency" else (script.iterations, script.warmups)


def expected_samples(request: RunRequest, inputs: list[InferenceInput]) -> int | None:
    """How many samples the run yields (a latency run without a limit: its minimum)."""
    if get_benchmark(request.benchmark).streamed:
        return 1  # one stream
    s = request.settings
    if request.mode == "latency":
        return s.limit if s.limit is not None else s.min_queries
    return len(inputs) if request.mode == "accuracy" else min(len(inputs), s.windows)
