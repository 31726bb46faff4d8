"""A board's run apart from the board: the request a run command becomes, its progress events,
the tally of what it produced and how its failures are classed.

``agent.board_worker`` executes the run; what is here needs neither the board's links nor its
state, only the command and what the runner reports.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel

from agent.board_access import BoardUnavailable, CommandFailed
from agent.discovery import MatchError
from agent.one_board import RunRequest
from agent.runner import RunInfo, RunSettings
from agent.serial_link import SerialLinkError
from farm.messages import ProgressEvent, RunCommand, RunInfoRecord, SampleDigest

#: Progress events at most this often (samples themselves stream continuously).
PROGRESS_EVERY_S = 1.0


class RunRefused(Exception):
    """The run cannot start on this board as it is (wrong firmware and no image, health
    bad): reported as an ``input`` failure, the board's health is not at fault."""


class CheckFailed(Exception):
    """A health check failed; the board's health already says so (not counted twice)."""


def run_request(job: RunCommand, datasets: Path) -> RunRequest:
    """The one-board runner's request for ``job``, its datasets below ``datasets``."""
    o = job.options
    settings = RunSettings(
        windows=o.windows,  # a user's performance or energy script: its loop count
        min_window_s=o.min_window_s,
        max_window_s=o.max_window_s,
        calibration_s=o.calibration_s,
        min_queries=o.min_queries,
        min_duration_s=o.min_duration_s,
        latency_inputs=o.latency_inputs,
        limit=o.limit,
        skip_seqs=frozenset(s for a, b in job.stored for s in range(a, b)),
        retries=0 if job.mode == "energy" else o.retries,
    )
    return RunRequest(
        benchmark=job.benchmark,
        mode=job.mode,
        dataset=datasets / job.dataset if job.dataset else datasets,
        out=Path("."),  # nothing is written on the agent: the controller keeps the files
        settings=settings,
        alt=o.alt,
        truth=o.truth,
        script=o.script,
    )


def run_info(info: RunInfo) -> RunInfoRecord:
    """What the runner decided and observed, as the ``done`` event carries it."""
    return RunInfoRecord(
        count=info.count,
        warmup=info.warmup,
        calibration=info.calibration,
        loop_wall_s=info.loop_wall_s,
        last_issue_s=info.last_issue_s,
    )


class ProgressEvents:
    """The runner's progress callback for one run: keeps the latest event, at most one every
    ``PROGRESS_EVERY_S`` (and the last), for the run loop to publish (a callback cannot await).
    """

    def __init__(self, agent: str, board: str, run: str, attempt: int | None) -> None:
        self.agent, self.board, self.run, self.attempt = agent, board, run, attempt
        self._loop = asyncio.get_running_loop()
        self._last = 0.0
        self._pending: ProgressEvent | None = None

    def __call__(self, done: int, total: int | None, eta: float | None) -> None:
        """Note the run's progress (the runner calls this after each sample)."""
        if self._loop.time() - self._last < PROGRESS_EVERY_S and done != total:
            return
        self._last = self._loop.time()
        self._pending = ProgressEvent(
            agent=self.agent,
            board=self.board,
            run=self.run,
            attempt=self.attempt,
            event="progress",
            done=done,
            total=total,
            eta_s=None if eta is None else round(eta, 1),
        )

    def take(self) -> ProgressEvent | None:
        """The event to publish now, if any (each is taken once)."""
        event, self._pending = self._pending, None
        return event


class Tally:
    """Samples produced by this execution: count, seq range, digest."""

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None
        self.digest = SampleDigest()

    def add(self, record: dict[str, Any]) -> None:
        """Count one sample record."""
        self.count += 1
        if self.first is None:
            self.first = record["seq"]
        self.last = record["seq"]
        self.digest.update(record)


def failure_kind(exc: Exception) -> Literal["infrastructure", "device"]:
    """Whose fault a failed run is: the farm's (links, ports, tools, checks) or the DUT's."""
    infrastructure = isinstance(
        exc,
        SerialLinkError | BoardUnavailable | MatchError | CommandFailed | CheckFailed | OSError,
    )
    return "infrastructure" if infrastructure else "device"


def event_name(kind: type[BaseModel]) -> str:
    """The ``event`` tag a run event type carries."""
    name: str = get_args(kind.model_fields["event"].annotation)[0]
    return name
