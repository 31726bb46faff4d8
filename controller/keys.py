"""The controller's Redis layout: every key in one place, so the processes that share it
(ingest, workers, exporter, client commands) cannot drift apart.

=======================================  =======  ===============================================
key                                      type     content
=======================================  =======  ===============================================
``farm:sweeps``                          zset     sweep id -> created (unix time)
``farm:sweep:{sweep}``                   hash     id, spec (JSON), label, created, total, state,
                                                  finished_at, verdict (a one-line summary)
``farm:sweep:{sweep}:verdict``           hash     the sweep's verdicts (:mod:`controller.verdicts`)
``farm:sweep:{sweep}:runs``              list     run ids, in submission order
``farm:sweep:{sweep}:skipped``           list     JSON ``{"board", "benchmark", "mode", "reason"}``
``farm:run:{run}``                       hash     see :data:`RUN_FIELDS`
``farm:run:{run}:samples``               hash     seq -> sample record (JSON), written once
``farm:run:{run}:trace``                 hash     ``seq:chunk`` -> a power trace chunk's values
                                                  (JSON array), written once (``farm.trace``)
``farm:run:{run}:events``                list     run events as received (JSON), capped
``farm:run:{run}:verified``              set      a sharded run's shards whose samples were
                                                  verified (:mod:`controller.shards`)
``farm:run:{run}:merger``                string   the shard that merges them
``farm:runs:active``                     set      runs dispatched or running (the reaper's view)
``farm:follower``                        string   the leading follower's token
                                                  (:mod:`controller.follower`)
``farm:agents``                          set      agent ids ever seen
``farm:agent:{agent}``                   hash     state, protocol, software, status (JSON),
                                                  heartbeat (JSON), last_seen
``farm:agent:{agent}:acks``              list     the agent's last command acks (JSON), capped
``farm:boards``                          set      board ids ever seen
``farm:board:{board}``                   hash     agent, status (JSON), last_seen
``farm:board:{board}:current``           string   the run whose turn it is on the board
``farm:board:{board}:waiting``           list     runs waiting for the board, in order
``farm:board:{board}:reservation``       hash     board, holder, note, since, until, console (the
                                                  open console's session id): see
                                                  :mod:`controller.reservations`
``farm:board:{board}:console``           string   that console's session id while it is alive
                                                  (expires unless its console refreshes it)
``farm:board:{board}:quarantine``        hash     reason, since, by (:mod:`controller.quarantine`)
``farm:board:{board}:ops``               list     the board's operations (JSON), newest first,
                                                  capped (:mod:`controller.board_history`)
``farm:board:{board}:check``             string   a scheduled health check is queued or running
``farm:lease:{board}``                   string   lease token (SET NX PX, renewed while running)
``farm:ingest:counters``                 hash     accepted_<kind> / rejected_<reason> /
                                                  accepted_samples / duplicate_samples ...
``farm:checks:scheduled``                hash     ``board|outcome`` -> scheduled health checks
                                                  that ended so (:mod:`controller.health_schedule`)
``farm:history:{board}:{bench}:{mode}``  zset     compact summary JSON -> finish time, one per
                                                  completed run (:mod:`controller.history`)
``farm:history:series``                  zset     ``board|benchmark|mode`` -> latest finish
``farm:history:sweeps``                  zset     sweep id -> its first entry's finish time
``farm:history:sweeps:last``             zset     sweep id -> its last entry's finish time
``farm:history:sweep-labels``            hash     sweep id -> label
``farm:history:firmware``                hash     firmware id (12 hex) -> identity JSON
``farm:verdicts:latest``                 hash     sweep label -> its latest judged sweep
=======================================  =======  ===============================================

Board ids are unique across the lab (``farm submit --boards id1,id2`` names them); an agent
that reports a board id another agent already owns is rejected by ingest.
"""

from __future__ import annotations

PREFIX = "farm"
SWEEPS = f"{PREFIX}:sweeps"
RUNS_ACTIVE = f"{PREFIX}:runs:active"
#: The leading follower's token (:mod:`controller.follower`).
FOLLOWER = f"{PREFIX}:follower"
AGENTS = f"{PREFIX}:agents"
BOARDS = f"{PREFIX}:boards"
INGEST_COUNTERS = f"{PREFIX}:ingest:counters"
#: The scheduled health checks' outcomes, per board (what the exporter counts).
SCHEDULED_CHECKS = f"{PREFIX}:checks:scheduled"
#: What the RQ workers count (jobs refused: not one of the project's job functions).
WORKER_COUNTERS = f"{PREFIX}:worker:counters"
HISTORY_SERIES = f"{PREFIX}:history:series"
HISTORY_SWEEPS = f"{PREFIX}:history:sweeps"
HISTORY_SWEEPS_LAST = f"{PREFIX}:history:sweeps:last"
HISTORY_SWEEP_LABELS = f"{PREFIX}:history:sweep-labels"
HISTORY_FIRMWARE = f"{PREFIX}:history:firmware"
#: The latest judged sweep of each label (what the exporter reads).
VERDICTS_LATEST = f"{PREFIX}:verdicts:latest"
#: Events kept per run (progress events are many; the final ones are what matter).
EVENTS_KEPT = 500
#: Command acks kept per agent (the newest): enough for a worker to find the answer to its
#: run command among the acks of flashes, health checks and other runs.
ACKS_KEPT = 200

#: Operations kept per board (the newest).
OPS_KEPT = 100

#: Fields of ``farm:run:{run}``.
RUN_FIELDS = (
    "id",
    "sweep",
    "board",
    "agent",
    "benchmark",
    "mode",
    "dataset",  # dataset set name under the agent's root, or ""
    "options",  # RunOptions JSON
    "label",
    "state",  # queued | dispatched | running | completed | failed | cancelled
    "attempts",  # dispatches so far
    "reasons",  # JSON list of every failure's reason
    "reason",  # the last one
    "job",  # the RQ job that has the run in hand: run-{id} dispatching, score-{id} scoring
    "queue",  # the RQ queue of its jobs (its sweep's priority)
    "lease",  # the board lease's token while the run holds the board
    "phase",  # who has a live run in hand: dispatching (its job), following (the
    # follower), scoring (its score job)
    "follow",  # JSON: the current dispatch as the follower needs it (controller.follower)
    "command",  # id of the last run command sent
    "created",
    "dispatched_at",
    "deadline",  # Unix time the current dispatch is given up at (moved only by samples stored)
    "started_at",
    "finished_at",
    "total",  # samples expected (from the agent's started event)
    "done",  # samples stored so far
    "eta_s",
    "summary",  # JSON (see controller.results)
    "artifacts",  # folder
    "cancel",  # "1" once a cancel was requested
    "progress",  # samples the agent reports produced (its last progress event)
    "final",  # the latest final run event as received (JSON: done, error, cancelled or
    # interrupted), kept here because the capped events list may trim it away
    "firmware",  # JSON: model, build, image, sha256, profile, name, software (the agent's
    # version), from the agent's started event (controller.ingest.run_events.firmware_field)
    "shards",  # a sharded accuracy run: JSON list of its shard runs (controller.shards)
    "boards",  # ... and of their boards, in shard order
    "shard_of",  # a shard: its parent run
    "shard_range",  # ... and its own seqs, JSON [start, stop)
)
RUN_STATES = ("queued", "dispatched", "running", "completed", "failed", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})


def sweep(sweep_id: str) -> str:
    """A sweep's hash."""
    return f"{PREFIX}:sweep:{sweep_id}"


def sweep_runs(sweep_id: str) -> str:
    """A sweep's run ids."""
    return f"{PREFIX}:sweep:{sweep_id}:runs"


def sweep_skipped(sweep_id: str) -> str:
    """What a sweep could not run, with the reason."""
    return f"{PREFIX}:sweep:{sweep_id}:skipped"


def sweep_verdict(sweep_id: str) -> str:
    """A sweep's verdicts against its baseline."""
    return f"{PREFIX}:sweep:{sweep_id}:verdict"


def run(run_id: str) -> str:
    """A run's hash."""
    return f"{PREFIX}:run:{run_id}"


def run_verified(run_id: str) -> str:
    """A sharded run's verified shards."""
    return f"{PREFIX}:run:{run_id}:verified"


def run_merger(run_id: str) -> str:
    """The shard that merges a sharded run."""
    return f"{PREFIX}:run:{run_id}:merger"


def run_samples(run_id: str) -> str:
    """A run's samples by seq."""
    return f"{PREFIX}:run:{run_id}:samples"


def run_trace(run_id: str) -> str:
    """A run's power trace chunks by ``seq:chunk`` (:func:`trace_field`)."""
    return f"{PREFIX}:run:{run_id}:trace"


def trace_field(seq: int, chunk: int) -> str:
    """The field of chunk ``chunk`` of sample ``seq``'s trace in :func:`run_trace`."""
    return f"{seq}:{chunk}"


def run_events(run_id: str) -> str:
    """A run's events."""
    return f"{PREFIX}:run:{run_id}:events"


def agent(agent_id: str) -> str:
    """An agent's liveness and status."""
    return f"{PREFIX}:agent:{agent_id}"


def agent_acks(agent_id: str) -> str:
    """An agent's last command acks (newest last, at most :data:`ACKS_KEPT`)."""
    return f"{PREFIX}:agent:{agent_id}:acks"


def board(board_id: str) -> str:
    """A board's status."""
    return f"{PREFIX}:board:{board_id}"


def board_current(board_id: str) -> str:
    """The run whose turn it is on the board (:mod:`controller.board_queue`)."""
    return f"{PREFIX}:board:{board_id}:current"


def board_waiting(board_id: str) -> str:
    """The runs waiting for the board, in order (:mod:`controller.board_queue`)."""
    return f"{PREFIX}:board:{board_id}:waiting"


def board_reservation(board_id: str) -> str:
    """Who holds the board, until when, and the open console's session."""
    return f"{PREFIX}:board:{board_id}:reservation"


def board_console(board_id: str) -> str:
    """The board's open console session, alive while its console refreshes this key."""
    return f"{PREFIX}:board:{board_id}:console"


def board_quarantine(board_id: str) -> str:
    """Why the board is out of service until an operator releases it."""
    return f"{PREFIX}:board:{board_id}:quarantine"


def board_ops(board_id: str) -> str:
    """The board's operations, newest first (at most :data:`OPS_KEPT`)."""
    return f"{PREFIX}:board:{board_id}:ops"


def board_check(board_id: str) -> str:
    """Set while a scheduled health check of the board is queued or running."""
    return f"{PREFIX}:board:{board_id}:check"


def lease(board_id: str) -> str:
    """A board's lease."""
    return f"{PREFIX}:lease:{board_id}"


def history(board_id: str, benchmark: str, mode: str) -> str:
    """The history of one board × benchmark × mode."""
    return f"{PREFIX}:history:{board_id}:{benchmark}:{mode}"
