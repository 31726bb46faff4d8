"""One asyncio task per board: its command queue, its state and health, and its runs.

A board executes strictly one job at a time (a run, a flash, a power cycle, a health check, a
console session), so its serial links never see two commands at once; boards run
concurrently. A run is the
one-board runner's (``agent.runner``) with the agent's additions: a health check first (flash
the right firmware if the board holds another), samples journalled and published in batches,
recovery from DUT faults (resync, power cycle, reopen the port after re-enumeration, retry
the step), and the board's health updated as LAVA does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.board_access import BoardAccess, BoardUnavailable, Identity
from agent.config import BoardConfig, Build
from agent.console import ConsoleSession
from agent.dut_client import DirectChannel, DutClient
from agent.health import BoardHealth
from agent.identity import ImageDigests, firmware_identity
from agent.journal import Journal
from agent.one_board import (
    Links,
    RunInputError,
    RunRequest,
    connect,
    expected_samples,
    prepare,
    request_script,
    script_counts,
    stream_target,
)
from agent.outbox import Outbox, SampleBatcher
from agent.run_bookkeeping import (
    CheckFailed,
    ProgressEvents,
    RunRefused,
    Tally,
    event_name,
    failure_kind,
    run_info,
    run_request,
)
from agent.runner import Runner, SilentPhaseTooLong
from agent.serial_link import SerialLink
from farm.catalog import Benchmark
from farm.datasets import Dataset
from farm.logs import get_logger
from farm.messages import (
    SAMPLE_BATCH,
    TRACE_CHUNK_VALUES,
    Accepted,
    AckOutcome,
    BoardState,
    BoardStatus,
    Cancelled,
    CommandAck,
    ConsoleCommand,
    Done,
    Failed,
    FlashCommand,
    HealthCheckCommand,
    LogEvent,
    PowerCycleCommand,
    RunCommand,
    Started,
    run_events_topic,
)
from farm.models import MODELS
from farm.sww_truth import TruthFile
from farm.trace import detach_trace

log = get_logger("agent.board_worker")

#: A console's rate when nothing says what the DUT talks at (the reference firmware's).
DEFAULT_CONSOLE_BAUD = 115200

Job = RunCommand | FlashCommand | PowerCycleCommand | HealthCheckCommand | ConsoleCommand


@dataclass
class _Queued:
    job: Job
    cancelled: bool = False
    reported: bool = False
    """A run's final event (done, error, cancelled) is journalled."""


class BoardWorker:
    """Executes one board's jobs in order (see the module docstring)."""

    def __init__(
        self,
        cfg: BoardConfig,
        *,
        agent: str,
        outbox: Outbox,
        journal: Journal,
        datasets: Path,
        sim_boards: list[Path],
        max_failures: int,
        starting: asyncio.Semaphore | None = None,
        batching: tuple[int, float] = (200, 0.1),
        trace_chunk_values: int = TRACE_CHUNK_VALUES,
        on_status: Callable[[BoardStatus], None],
        ack: Callable[[CommandAck], Awaitable[None]],
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.agent = agent
        self.outbox = outbox
        self.journal = journal
        self.datasets = datasets
        self.access = BoardAccess(cfg, sim_boards)
        self.health = BoardHealth(max_failures=max_failures)
        self.starting = starting or asyncio.Semaphore(1)
        """Held while the board starts (a health check, a flash, a run's ports opening): the
        agent's boards share it, so only so many start at once."""
        self.batching = batching
        """(samples, seconds): a sample batch leaves when it holds this many or is this old."""
        self.trace_chunk_values = trace_chunk_values
        """A power trace longer than this goes in chunks of this many samples."""
        self.on_status = on_status
        self.ack = ack
        self.state: BoardState = "idle"
        self.identity: Identity | None = None
        self.digests = ImageDigests()
        self.run_id: str | None = None
        self.last_error: str | None = None
        self.checked: float | None = None
        """When the last health check ended (wall clock: the controller compares it)."""
        self.console: ConsoleSession | None = None
        """The console session holding the board, while it runs."""
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._current: _Queued | None = None
        self._task: asyncio.Task[None] | None = None
        self._links: Links | None = None

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> BoardStatus:
        """The board's status message now."""
        images = {
            model: sorted(builds) for model, builds in self.cfg.firmware.images.items() if builds
        }
        return BoardStatus(
            agent=self.agent,
            board=self.id,
            state=self.state,
            health=self.health.health,
            health_reason=self.health.reason,
            model=self.identity.model if self.identity else None,
            build=self.identity.build if self.identity else None,
            run=self.run_id,
            last_error=self.last_error,
            energy=self.cfg.energy_capable,
            images=images,
            tags=self.cfg.tags,
            system=self.cfg.system.model_dump(exclude_none=True),
            checked=self.checked,
            failures=self.health.failures,
            bauds=self.access.bauds,
            energy_baud=self.access.energy_baud if self.cfg.energy_capable else None,
        )

    def _publish_status(self) -> None:
        self.on_status(self.status())

    # -- queue ----------------------------------------------------------------------------------

    def submit(self, job: Job) -> int:
        """Queue a job; return how many jobs are ahead of it."""
        ahead = len(self._queue) + (1 if self._current is not None else 0)
        self._queue.append(_Queued(job))
        self._wake.set()
        return ahead

    def has_run(self, run: str) -> bool:
        """Whether ``run`` is queued or running here."""
        return any(
            isinstance(q.job, RunCommand) and q.job.run == run
            for q in [*self._queue, *([self._current] if self._current else [])]
        )

    async def cancel(self, run: str) -> bool:
        """Cancel a queued or running run; False if it is not here."""
        for queued in self._queue:
            if isinstance(queued.job, RunCommand) and queued.job.run == run:
                self._queue.remove(queued)
                await self._event(queued.job, Cancelled, count=0)
                await self.journal.run_finished(run)
                return True
        current = self._current
        if current is not None and isinstance(current.job, RunCommand) and current.job.run == run:
            current.cancelled = True
            if self._task is not None:
                self._task.cancel()
            return True
        return False

    def has_console(self, session: str) -> bool:
        """Whether console session ``session`` is queued or open here."""
        if self.console is not None and self.console.session == session:
            return True
        return any(
            isinstance(q.job, ConsoleCommand) and q.job.session == session for q in self._queue
        )

    async def console_command(self, command: ConsoleCommand) -> bool:
        """Hand a ``line``, ``keepalive`` or ``close`` to its session; a ``close`` of a session
        still queued takes it out of the queue. False when the session is not here."""
        session = self.console
        if session is not None and session.session == command.session:
            return session.deliver(command)
        for queued in self._queue:
            job = queued.job
            if isinstance(job, ConsoleCommand) and job.session == command.session:
                if command.action == "close":
                    self._queue.remove(queued)
                    gone = ConsoleSession(job, agent=self.agent, outbox=self.outbox)
                    await gone.close("closed by the holder before it opened")
                return True
        return False

    def ahead(self) -> int:
        """Jobs a newly submitted one would wait for."""
        return len(self._queue) + (1 if self._current is not None else 0)

    async def serve(self) -> None:
        """Check the board, then execute jobs until cancelled (agent shutdown)."""
        self._publish_status()
        async with self.starting:
            await self._check(explicit=False)
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            queued = self._current = self._queue.popleft()
            self._task = asyncio.get_running_loop().create_task(
                self._execute(queued), name=f"job-{self.id}"
            )
            try:
                await self._task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the agent is shutting down: the journal keeps the run
                await self._cancelled_late(queued)
            except Exception as exc:
                # A bug must cost one job, never the agent and its other boards.
                log.exception("job_crashed", board=self.id)
                self.last_error = f"internal error: {type(exc).__name__}: {exc}"
                self.health.failed(self.last_error)
                await self._crashed(queued, self.last_error)
            finally:
                self._current, self._task, self.run_id = None, None, None
                if self.state != "offline":
                    self.state = "idle"
                self._publish_status()

    async def _cancelled_late(self, queued: _Queued) -> None:
        """A cancel that hit the job outside the run's own handlers still ends the run."""
        job = queued.job
        if isinstance(job, RunCommand) and not queued.reported:
            await self._event(job, Cancelled, count=0)
            await self.journal.run_finished(job.run)

    async def _crashed(self, queued: _Queued, reason: str) -> None:
        job = queued.job
        if isinstance(job, ConsoleCommand):
            # Called from serve()'s handler: whatever went wrong must not end the board's task
            # (and, through the task group, the agent) a second time from here.
            try:
                await ConsoleSession(job, agent=self.agent, outbox=self.outbox).close(reason)
            except Exception:
                log.exception("console_close_failed", board=self.id, session=job.session)
        elif isinstance(job, RunCommand):
            if not queued.reported:
                await self._event(job, Failed, kind="infrastructure", reason=reason)
                await self.journal.run_finished(job.run)
        else:
            await self._ack(job, "failed", reason, {})

    async def _execute(self, queued: _Queued) -> None:
        job = queued.job
        if isinstance(job, RunCommand):
            await self._run(queued)
            return
        if isinstance(job, ConsoleCommand):
            await self._console(job)
            return
        self.state = "flashing" if isinstance(job, FlashCommand) else "busy"
        self._publish_status()
        detail: dict[str, Any] = {}
        try:
            async with self.starting:
                await self._operate(job, detail)
        except CheckFailed as exc:
            await self._ack(job, "failed", str(exc), detail)
            return
        except Exception as exc:  # the tool, the port, the monitor: all end in a failed ack
            reason = f"{type(exc).__name__}: {exc}"
            self.last_error = reason
            self.health.failed(reason)
            await self._ack(job, "failed", reason, detail)
            return
        if self.identity is not None:
            detail.update(model=self.identity.model, build=self.identity.build)
        await self._ack(job, "done", None, detail)

    async def _operate(self, job: Job, detail: dict[str, Any]) -> None:
        """A flash, a power cycle or a health check, then a check that must pass (raises
        ``CheckFailed``); what to report goes into ``detail``."""
        if isinstance(job, FlashCommand):
            detail["seconds"] = round(await self.access.flash(job.model, job.build), 3)
            identity = await self._checked()
            if (identity.model, identity.build) != (job.model, job.build):
                self.health.check_failed(f"flashed {job.model} {job.build}, runs {identity}")
                raise CheckFailed(
                    f"after flashing {job.model} {job.build} the DUT reports "
                    f"{self._identity_text()}"
                )
        elif isinstance(job, PowerCycleCommand):
            detail["power"] = await self.access.power_cycle()
            await self._checked()
        else:
            await self._checked()

    async def _ack(
        self, job: Job, outcome: AckOutcome, reason: str | None, detail: dict[str, Any]
    ) -> None:
        await self.ack(
            CommandAck(
                agent=self.agent,
                command=job.id,
                type=job.type,
                outcome=outcome,
                reason=reason,
                board=self.id,
                detail=detail,
            )
        )

    # -- console --------------------------------------------------------------------------------

    async def _console(self, job: ConsoleCommand) -> None:
        """A console session on the DUT's own port, holding the board until it ends; then a
        health check (the holder may have left the DUT in any state)."""
        session = self.console = ConsoleSession(job, agent=self.agent, outbox=self.outbox)
        self.state = "busy"
        self._publish_status()
        link: SerialLink | None = None
        try:
            try:
                ports = await self.access.wait_for_ports()
                await self.access.power_on(ports)
                link = await SerialLink.open(ports.dut, self._console_baud())
            except Exception as exc:  # no port, no power: the holder is told why
                await session.close(f"cannot open the DUT's port: {type(exc).__name__}: {exc}")
                return
            try:
                reason = await session.serve(link)
            except Exception as exc:  # the port failed under a write: the holder is told
                reason = f"the DUT's port failed: {type(exc).__name__}: {exc}"
            await session.close(reason)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await session.close("the agent stopped")
            raise
        finally:
            self.console = None
            if link is not None:
                with contextlib.suppress(Exception):
                    await link.close()
        async with self.starting:
            await self._check(explicit=False)

    def _console_baud(self) -> int:
        """The DUT's rate: the one its last check answered at, the config's, its model's."""
        if self.identity is not None and self.identity.baud:
            return self.identity.baud
        if self.cfg.baud.performance:
            return self.cfg.baud.performance
        known = MODELS.get(self.identity.model) if self.identity is not None else None
        return known.default_baud if known is not None else DEFAULT_CONSOLE_BAUD

    # -- health ---------------------------------------------------------------------------------

    async def _check(self, *, explicit: bool, keep: bool = False) -> Identity | None:
        """Ask the DUT what it runs and set health; ``None`` if it did not answer. ``keep``:
        leave the DUT's port open for the run about to start (``BoardAccess.take_link``)."""
        try:
            prefer = self.identity.build if self.identity else None
            self.identity = await self.access.identify(prefer, keep=keep)
        except Exception as exc:  # whatever stops the DUT answering is a failed check
            self.checked = time.time()
            reason = str(exc)
            if not isinstance(exc, BoardUnavailable):
                reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, BoardUnavailable) and "devices not back" in reason:
                self.state = "offline"
            (self.health.check_failed if explicit else self.health.failed)(reason)
            self.last_error = reason
            log.warning("health_check_failed", board=self.id, reason=reason)
            self._publish_status()
            return None
        self.checked = time.time()
        if self.state == "offline":
            self.state = "idle"
        self.health.passed()
        log.info(
            "health_check_passed",
            board=self.id,
            model=self.identity.model,
            build=self.identity.build,
        )
        self._publish_status()
        return self.identity

    async def _checked(self) -> Identity:
        """An explicit health check that raises ``CheckFailed`` (health already set)."""
        identity = await self._check(explicit=True)
        if identity is None:
            raise CheckFailed(f"health check failed: {self.health.reason}")
        return identity

    def _identity_text(self) -> str:
        if self.identity is None:
            return "nothing (no answer)"
        return f"{self.identity.model} ({self.identity.build} build)"

    # -- runs -----------------------------------------------------------------------------------

    async def accepted(self, job: RunCommand, position: int) -> None:
        """Publish the run's ``accepted`` event."""
        await self._event(job, Accepted, command=job.id, position=position)

    async def _event(self, job: RunCommand, event_type: type, **fields: Any) -> None:
        event = event_type(
            agent=self.agent,
            board=self.id,
            run=job.run,
            attempt=job.attempt,
            event=event_name(event_type),
            **fields,
        )
        await self.outbox.put(
            run_events_topic(self.agent, self.id, job.run), event.dumps(), run=job.run
        )

    async def _run(self, queued: _Queued) -> None:
        job = queued.job
        assert isinstance(job, RunCommand)
        self.state, self.run_id = "busy", job.run
        self._publish_status()
        # The journal has held the run since it was accepted (service), so a restart reports
        # even a run that never started.
        batcher = SampleBatcher(
            self.outbox,
            self.agent,
            self.id,
            job.run,
            attempt=job.attempt,
            max_samples=self.batching[0],
            max_delay_s=self.batching[1],
        )
        tally = Tally()
        progress = ProgressEvents(self.agent, self.id, job.run, job.attempt)
        try:
            request = run_request(job, self.datasets)
            try:
                # Opens and sizes every dataset file: off the event loop.
                bench, dataset, inputs = await asyncio.to_thread(prepare, request, ports=False)
            except RunInputError as exc:
                raise RunRefused(str(exc)) from None
            if self.health.refuses_runs:
                raise RunRefused(f"board health is bad ({self.health.reason}): run a health check")
            async with self.starting:
                identity = await self._ensure_firmware(job, bench)
                ports = await self.access.wait_for_ports()
                request.port = ports.dut
                request.interface = ports.interface
                request.monitor = self.access.monitor_target(ports)
                request.baud = self._baud(job, identity)
                # The port the health check just left open and in step, if the run talks
                # to the DUT directly at the rate it answered at.
                kept = None
                if job.mode != "energy" and request.port is not None and request.baud:
                    kept = await self.access.take_link(request.port, request.baud)
                else:
                    await self.access.drop_kept()
                self._links = await connect(request, bench, kept)
            runner = self._runner(job, request, bench, inputs, progress, dataset)
            # The run's, not this execution's: a resumed run is still N samples long.
            total = expected_samples(request, inputs)
            # A latency run without a limit runs for a duration: its seqs have no bound here.
            seq_limit = request.settings.limit if request.mode == "latency" else total
            await self._event(
                job,
                Started,
                model=identity.model,
                build=identity.build,
                total=total,
                seq_limit=seq_limit,
                dataset=str(dataset.folder),
                firmware=await firmware_identity(self.cfg, identity, self.digests),
            )
            async for sample in runner.run():
                record, chunks = detach_trace(SAMPLE_BATCH.record(sample), self.trace_chunk_values)
                tally.add(record)
                await batcher.add(record, chunks)
                if (event := progress.take()) is not None:
                    await self.outbox.put(
                        run_events_topic(self.agent, self.id, job.run), event.dumps(), run=job.run
                    )
            await batcher.close()
            await self._event(
                job,
                Done,
                count=tally.count,
                digest=tally.digest.hexdigest(),
                first_seq=tally.first,
                last_seq=tally.last,
                skipped=len(request.settings.skip_seqs),
                info=run_info(runner.info),
            )
            queued.reported = True
            self.health.passed()
        except asyncio.CancelledError:
            await batcher.close()
            if not queued.cancelled:
                raise  # shutdown: the journal keeps the run; the next start reports it
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self._event(job, Cancelled, count=tally.count, last_seq=tally.last)
            queued.reported = True
            await self._settle_after_cancel()
        except (RunRefused, SilentPhaseTooLong) as exc:
            await batcher.close()
            await self._fail(job, "input", str(exc), tally, health=False)
            queued.reported = True
        except Exception as exc:
            await batcher.close()
            kind = failure_kind(exc)
            reason = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
            # A failed health check has already set the health: not counted twice.
            await self._fail(job, kind, reason, tally, health=not isinstance(exc, CheckFailed))
            queued.reported = True
        finally:
            if self._links is not None:
                with contextlib.suppress(Exception):
                    await self._links.close()
                self._links = None
            await self.access.drop_kept()  # a check's port no run took (it failed first)
            if queued.reported:
                await self.journal.run_finished(job.run)

    async def _fail(
        self, job: RunCommand, kind: str, reason: str, tally: Tally, *, health: bool
    ) -> None:
        self.last_error = reason
        if health:
            self.health.failed(reason)
        log.warning("run_failed", board=self.id, run=job.run, kind=kind, reason=reason)
        await self._event(
            job, Failed, kind=kind, reason=reason, count=tally.count, last_seq=tally.last
        )

    async def _settle_after_cancel(self) -> None:
        """A cancelled command may still be running on the DUT: wait it out (resync, within
        the run's own budget) so the board is idle and answering when the next job starts."""
        links, self._links = self._links, None
        if links is not None:
            with contextlib.suppress(Exception):
                await links.dut.resync()
            with contextlib.suppress(Exception):
                await links.close()
        async with self.starting:
            await self._check(explicit=False)

    async def _ensure_firmware(self, job: RunCommand, bench: Benchmark) -> Identity:
        """Health check; flash the benchmark's firmware if the board holds another."""
        need: Build = "energy" if job.mode == "energy" else "performance"
        if job.mode == "energy" and not self.cfg.energy_capable:
            raise RunRefused(f"board {self.id} has no interface board and energy monitor")
        identity = await self._check(explicit=False, keep=True)
        if identity is None:
            raise CheckFailed(f"health check failed: {self.health.reason}")
        if bench.accepts_firmware(identity.model) and identity.build == need:
            return identity
        model = next((m for m in bench.firmware_models if self.access.image(m, need)), None)
        if model is None or self.cfg.firmware.flash is None:
            raise RunRefused(
                f"the DUT runs {self._identity_text()}; {bench.id} {job.mode} needs "
                f"{' or '.join(bench.firmware_models)} {need} firmware, and this board has "
                + ("no flash command" if model else f"no {need} image for it")
            )
        await self._event(
            job, LogEvent, message=f"flashing {model} {need} (DUT had {self._identity_text()})"
        )
        self.state = "flashing"
        self._publish_status()
        try:
            await self.access.flash(model, need)
        finally:
            self.state = "busy"
        identity = await self._check(explicit=False, keep=True)
        if identity is None:
            raise CheckFailed(f"health check after flashing failed: {self.health.reason}")
        if not bench.accepts_firmware(identity.model) or identity.build != need:
            raise BoardUnavailable(
                f"after flashing {model} {need} the DUT reports {self._identity_text()}"
            )
        return identity

    def _baud(self, job: RunCommand, identity: Identity) -> int | None:
        if job.mode == "energy":
            # The baud its health check just reached the energy firmware at.
            return self.access.energy_baud
        # The rate the DUT answered this run's health check at: a configured rate describes
        # the board's own firmware, and a flashed image of another model may talk at another.
        return identity.baud or self.cfg.baud.performance

    def _runner(
        self,
        job: RunCommand,
        request: RunRequest,
        bench: Benchmark,
        inputs: list[Any],
        progress: ProgressEvents,
        dataset: Dataset | TruthFile,
    ) -> Runner:
        assert self._links is not None
        script = request_script(request, bench)

        runner: Runner

        async def recover(exc: Exception, attempt: int) -> DutClient:
            return await self._recover(job, request, bench, runner, exc, attempt)

        runner = Runner(
            self._links.dut,
            inputs,
            job.mode,
            script_counts(job.mode, script),
            request.settings,
            monitor=self._links.monitor,
            progress=progress,
            recover=recover,
            stream=stream_target(self._links, dataset),
            sized=script.sized,
        )
        return runner

    async def _recover(
        self,
        job: RunCommand,
        request: RunRequest,
        bench: Benchmark,
        runner: Runner,
        exc: Exception,
        attempt: int,
    ) -> DutClient:
        """Bring the DUT back after a failed step: resync; else power-cycle (if configured)
        and reopen the ports once they are back."""
        dut = runner.dut
        await self._event(
            job,
            LogEvent,
            level="warning",
            message=f"step failed ({type(exc).__name__}: {exc}); recovering (attempt {attempt})",
        )
        links = self._links
        if links is not None and all(link.is_open for link in links.links):
            channel = dut.channel
            if isinstance(channel, DirectChannel):
                # The longest a healthy DUT could still be busy with the abandoned command.
                channel.busy_limit_s = max(
                    1.0, dut.infer_budget_s(runner.info.count or 1, runner.info.warmup)
                )
            try:
                await dut.resync()
                return dut
            except Exception as resync_exc:  # the next remedy is a power cycle
                log.warning("resync_failed", board=self.id, error=str(resync_exc))
        if links is not None:
            await links.close()
            self._links = None
        with contextlib.suppress(BoardUnavailable):
            how = await self.access.power_cycle()
            await self._event(job, LogEvent, level="warning", message=f"power-cycled ({how})")
        ports = await self.access.wait_for_ports()
        request.port, request.interface = ports.dut, ports.interface
        request.monitor = self.access.monitor_target(ports)
        self._links = await connect(request, bench)
        fresh = self._links.dut
        # Keep what was measured: a fresh client would budget 30 s for its first inference.
        fresh.latency_s, fresh.slowest_s = dut.latency_s, dut.slowest_s
        return fresh
