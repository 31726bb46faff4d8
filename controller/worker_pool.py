"""``farm controller worker``: one supervising process, N forked RQ workers, one reaper and
one follower.

A running board holds no worker: a run's jobs (dispatch, then score) take a worker for
seconds, and the follower in the supervisor (:mod:`controller.follower`) watches every
running run in between, so the worker count follows how many jobs run at once, not how many
boards do. Started as separate programs, each worker pays for its own interpreter, redis-py, rq,
pydantic, aiomqtt and the job code (~50 MiB each), RQ's default worker forks a work-horse
per job on top (~45 MiB more), and each horse imports numpy and scikit-learn again when it
scores a run (seconds of CPU, when a sweep's accuracy runs all end together). Here the
supervisor imports all of that once, freezes the objects (``gc.freeze``: the collector then
never writes to those pages, so they stay shared copy-on-write) and forks the workers: a
running board costs only the pages its worker writes.

The workers are RQ ``SimpleWorker`` instances, which run a job in their own process instead of
forking a horse for it: a horse writes ~10 MiB of pages it shares with its worker (CPython's
reference counts dirty every page whose objects the job touches), measured 43 against
34 MiB per running board at 8 boards (bench/README.md (b)). What the horse gave, isolation
of one job, matters less here: a run job crashing its worker is a worker lost, which the
supervisor restarts and the reaper recovers from like any killed worker; a job's memory goes
back to the worker's allocator for the next job.

The supervisor also runs the lease reaper (:mod:`controller.reaper`) and the follower: one per
host rather than one per worker, each reading every run it looks after in a few pipelined
round trips a tick.

Why not RQ's own ``WorkerPool``: its supervision loop joins each child with a 0.1 s timeout in
turn (6.4 s per pass at 64 workers, which would delay the reaper as much), and it names workers
with random ids; the supervisor here is a ``waitpid`` loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import logging
import mmap
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from controller import keys
from farm.logs import get_logger

log = get_logger("controller.worker_pool")

#: A worker that dies sooner than this after its start is restarted after a growing delay
#: (a crash loop, e.g. Redis refusing connections, must not fork as fast as it can).
STABLE_S = 10.0
#: How long the supervisor sleeps between looks at its children (and reaper and follower
#: ticks): the follower's poll (``controller.jobs.POLL_S``).
TICK_S = 0.25
#: What dispatching and following a run imports (aiomqtt, redis-py, rq, pydantic, farm.messages).
JOB_MODULES = (
    "controller.jobs",
    "controller.reaper",
    "controller.follower",
    "controller.health_schedule",
    "rq",
)
#: What scoring a run imports (``farm.scoring.accuracy.roc_auc`` imports the last two late).
SCORING_MODULES = ("controller.results", "numpy", "sklearn.metrics")
#: After the first stop signal, a worker still running a job gets a cold shutdown: its run goes
#: on at the agent and the next worker takes it up from the stored samples (a warm one would
#: wait for the whole run to end, minutes or hours). An idle worker is left to finish its warm
#: shutdown: it has nothing to hand back, and on a loaded machine stopping RQ's scheduler
#: process alone can take longer than this.
HANDBACK_S = 3.0
#: After the first stop signal, whatever is left of a worker (its process group: RQ's scheduler
#: process too) is killed; the run is then the reaper's, as after a crash.
KILL_S = 8.0
#: RQ's pubsub thread reads with this timeout (RQ's own 60 s is how long a stop could wait).
PUBSUB_READ_S = 1.0
#: The only functions a worker runs: the project's job functions (what controller.sweeps and
#: controller.judge enqueue, and the nightly sweep deploy/rq-cron schedules). Anyone who
#: reaches Redis can enqueue a job, and RQ would run any importable callable (``os.system``
#: included) with the worker's rights.
JOB_FUNCTIONS = frozenset(
    {
        "controller.jobs.execute_run",
        "controller.jobs.score_run",
        "controller.jobs.judge_sweep",
        "controller.jobs.submit_nightly",
        "controller.health_schedule.scheduled_health_check",
    }
)
#: The signals that stop the pool (and, passed on, each worker).
_STOPS = frozenset({signal.SIGTERM, signal.SIGINT})
#: Linux's ``PR_SET_PDEATHSIG``: a worker gets SIGTERM (a warm shutdown) if the supervisor dies.
_PR_SET_PDEATHSIG = 1


def preload(scoring: bool = True) -> None:
    """Import what run jobs use, so the forked workers share it; then freeze it.

    ``scoring`` also imports numpy and scikit-learn (the scoring of accuracy runs), with their
    BLAS pools limited to one thread: scores are small vectors, and N workers share the cores.
    """
    modules = list(JOB_MODULES)
    if scoring:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")
        modules += SCORING_MODULES
    for module in modules:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()


@dataclass
class _Slot:
    """One worker position: its current process and how its restarts are going."""

    index: int
    pid: int = 0
    started: float = 0.0
    generation: int = 0
    failures: int = 0
    restart_at: float | None = None
    #: How far a stop went with this worker: 0 warm, 1 cold, 2 killed.
    escalation: int = 0
    exit_codes: list[int] = field(default_factory=list)


class WorkerPool:
    """Fork ``processes`` RQ workers on ``queues`` of ``redis_url`` and keep them running.

    ``name``: workers are named ``<name>-<i>`` (``<name>-<i>.<generation>`` after a restart:
    RQ refuses a name a dead worker may still hold for a while); RQ's random names without it.
    ``burst``: workers exit when the queues are empty, and the pool when they all have."""

    def __init__(
        self,
        redis_url: str,
        queues: Sequence[str],
        processes: int = 1,
        *,
        name: str | None = None,
        burst: bool = False,
    ) -> None:
        if processes < 1:
            raise ValueError("a worker pool needs at least one process")
        self.redis_url = redis_url
        self.queues = list(queues)
        self.name = name
        self.burst = burst
        self.slots = [_Slot(i) for i in range(processes)]
        #: One byte per slot, shared with the forked workers: 1 while that worker runs a job.
        #: The supervisor reads it without a round trip to Redis (which may be what is down).
        self._busy = mmap.mmap(-1, processes)
        self._stopping: int | None = None
        self._stop_at = 0.0

    # -- supervisor -----------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until every worker has exited (SIGTERM/SIGINT: a warm shutdown of all,
        a second one a cold one); the exit status (non-zero if a worker failed in burst)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOPS}
        try:
            for slot in self.slots:
                self._spawn(slot)
            log.info(
                "worker_pool_started",
                pid=os.getpid(),
                processes=len(self.slots),
                queues=",".join(self.queues),
            )
            self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        codes = [code for slot in self.slots for code in slot.exit_codes]
        log.info("worker_pool_stopped", exit_codes=codes)
        return 1 if self.burst and any(codes) else 0

    def _supervise(self) -> None:
        from controller.follower import Follower
        from controller.reaper import Reaper

        reaper = Reaper(self.redis_url)
        follower = Follower(self.redis_url)
        while any(slot.pid for slot in self.slots) or self._restarts_pending():
            self._collect()
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot)
            if self._stopping is None:
                reaper.tick()
                follower.tick()
            else:
                self._escalate(now - self._stop_at)
            time.sleep(TICK_S)

    def _restarts_pending(self) -> bool:
        return self._stopping is None and any(s.restart_at is not None for s in self.slots)

    def _collect(self) -> None:
        """Reap exited workers; schedule their restart unless stopping or in burst mode."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            # RQ stops its scheduler process only when the worker exits cleanly; a worker
            # killed outright (OOM killer, kill -9) left it running with no parent, holding
            # the scheduler's lock. It is in the worker's process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            slot.pid = 0
            slot.exit_codes.append(code)
            lived = time.monotonic() - slot.started
            if self._stopping is not None or (self.burst and code == 0):
                log.info("worker_exited", slot=slot.index, pid=pid, code=code)
                continue
            slot.failures = 0 if lived >= STABLE_S else slot.failures + 1
            delay = min(60.0, 0.5 * 2**slot.failures) if slot.failures else 0.0
            slot.restart_at = time.monotonic() + delay
            log.warning(
                "worker_died",
                slot=slot.index,
                pid=pid,
                code=code,
                lived_s=lived,
                restart_in_s=delay,
            )

    def _escalate(self, waited: float) -> None:
        """Bound a stop: a cold shutdown after ``HANDBACK_S``, SIGKILL after ``KILL_S``."""
        for slot in self.slots:
            if not slot.pid:
                continue
            if waited >= KILL_S and slot.escalation < 2:
                slot.escalation = 2
                log.warning("worker_killed", slot=slot.index, pid=slot.pid, waited_s=waited)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(slot.pid, signal.SIGKILL)
            elif waited >= HANDBACK_S and slot.escalation < 1 and self._busy[slot.index]:
                slot.escalation = 1
                log.info("worker_cold_shutdown", slot=slot.index, pid=slot.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # The first signal asks every worker for a warm shutdown (an idle one exits at once);
        # _escalate bounds the rest. A second signal is passed on too: RQ makes it a cold one.
        if self._stopping is None:
            self._stop_at = time.monotonic()
        self._stopping = signum
        for slot in self.slots:
            slot.restart_at = None
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    # -- workers --------------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        slot.restart_at = None
        if self._stopping is not None:
            return
        name = None
        if self.name:
            name = f"{self.name}-{slot.index}"
            if slot.generation:
                name += f".{slot.generation}"
        parent = os.getpid()
        # A stop signal waits until both sides know who they are: the supervisor the child's
        # pid (to pass the stop on), the child its own handlers (not the supervisor's).
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
            slot.failures += 1
            delay = min(60.0, 0.5 * 2**slot.failures)
            slot.restart_at = time.monotonic() + delay
            log.error("worker_fork_failed", slot=slot.index, error=str(exc), retry_in_s=delay)
            return
        if pid:
            # Its own process group (set on both sides, whichever runs first): a stop can
            # then kill the worker with RQ's scheduler process, and a terminal's Ctrl-C
            # reaches only the supervisor, which passes it on once.
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)
            slot.pid, slot.started, slot.escalation = pid, time.monotonic(), 0
            slot.generation += 1
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
            return
        code = 1
        try:
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)
            for sig in _STOPS:
                # Until RQ installs its own handlers in work(), a stop is only noted.
                signal.signal(sig, _note_early_stop)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
            code = self._worker(slot.index, name, parent)
        except BaseException:
            log.exception("worker_crashed", slot=slot.index)
        finally:
            # Never back into the supervisor's loop, whatever a late signal raises here.
            try:
                logging.shutdown()
            finally:
                os._exit(code)

    def _worker(self, index: int, name: str | None, parent: int) -> int:
        """The body of a forked worker: its own Redis connection and RQ's work loop."""
        with contextlib.suppress(OSError, AttributeError):  # Linux only
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            return 0  # the supervisor died before the line above took effect
        from redis import Redis

        from controller.queueing import SERIALIZER

        connection = Redis.from_url(self.redis_url)
        self._busy[index] = 0  # a previous worker in this slot may have died mid-job
        worker = _worker_class(self._busy, index)(
            self.queues, connection=connection, name=name, serializer=SERIALIZER
        )
        worker.work(burst=self.burst, with_scheduler=True)
        return 0


def refusal(job: Any) -> str | None:
    """Why a worker must not run ``job`` (an RQ job), or ``None``: its payload is JSON
    (:mod:`controller.queueing`) naming one of :data:`JOB_FUNCTIONS`, called plainly (no
    instance, callbacks or webhooks: the project's jobs have none, and each would run code or
    reach out on the job's say-so)."""
    from rq.exceptions import DeserializationError

    try:
        name = job.func_name
    except DeserializationError:
        return "its payload is not a JSON job (a pickled or corrupt job): not read"
    if not isinstance(name, str) or name not in JOB_FUNCTIONS or job.instance is not None:
        return f"{name} is not a tinyfarm job function"
    names = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    if any(names) or job.webhooks:
        return f"{name} job with callbacks or webhooks"
    return None


#: Stop signals a forked worker received before RQ's handlers were in place.
_early_stops: list[int] = []


def _note_early_stop(signum: int, frame: FrameType | None) -> None:
    _early_stops.append(signum)


def _worker_class(busy: mmap.mmap, index: int) -> type:
    """RQ's ``SimpleWorker``, stoppable at any moment and promptly, that marks
    ``busy[index]`` while it runs a job (the supervisor's cold shutdown is for those only).

    RQ registers a worker before it installs its signal handlers: a stop in between killed it
    with the default action and left its registration behind. Here such a stop is noted and
    handed to RQ as a warm shutdown as soon as its handlers are in place.

    Also, RQ 3.0 reads its pubsub channel (stop and kill commands) with a 60 s timeout and, on exit,
    sends UNSUBSCRIBE before stopping that thread; when the reply wakes the thread first, it
    goes back to a 60 s read, and redis-py 6+ joins it without a bound: an idle worker took a
    minute to stop and ``--burst`` hung after "done, quitting". A 1 s read bounds that join.
    Both use RQ internals (pinned in pyproject.toml); remove them once RQ installs its handlers
    before registering and stops the thread before unsubscribing.
    """
    from rq import SimpleWorker
    from rq.utils import now

    class Worker(SimpleWorker):
        def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
            reason = refusal(job)
            if reason is None:
                busy[index] = 1
                try:
                    return bool(super().perform_job(job, queue, execution))
                finally:
                    busy[index] = 0
            log.error("job_refused", job=job.id, queue=queue.name, reason=reason)
            # Failed for good, and nothing of it run: no retry, no callback, no webhook.
            job.retries_left = 0
            job._success_callback_name = job._failure_callback_name = None
            job._stopped_callback_name = None
            job.webhooks = []
            job.ended_at = now()
            self.connection.hincrby(keys.WORKER_COUNTERS, "refused_jobs", 1)
            self.handle_job_failure(
                job, queue, exc_string=f"refused: {reason}", execution=execution
            )
            return False

        def _install_signal_handlers(self) -> None:
            super()._install_signal_handlers()
            if _early_stops:
                self._stop_requested = True  # RQ's loop checks it before each dequeue

        def subscribe(self) -> None:
            self.pubsub = self.connection.pubsub()
            self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
            self.pubsub_thread = self.pubsub.run_in_thread(
                sleep_time=PUBSUB_READ_S,
                daemon=True,
                exception_handler=self._pubsub_exception_handler,
            )

    return Worker
