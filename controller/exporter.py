"""``farm controller exporter``: the farm's state in Redis as Prometheus metrics.

A custom collector (:class:`FarmCollector`) reads Redis at scrape time, so any number of RQ
workers and ingest processes write state without the multiprocess pitfalls of
prometheus-client (one metrics file per forked work-horse): nothing is counted in a job's
memory (what a job counts, such as a scheduled health check's outcome, it counts in Redis).
Every metric is declared in :mod:`controller.metrics`.

**What a scrape reads** (three or four pipelined round trips): the agents' and boards' hashes
(with each board's quarantine and reservation), the ingest and scheduled health check
counters, the RQ queue lengths, the sweep index, the runs of the sweeps still running (a run
live at the last scrape by its state alone, its whole row once it ended), and the index
of the latest judged sweep per label (:mod:`controller.verdicts`), whose verdict record is
read only when it names another sweep than the last scrape saw. A run that ended is final
(``controller.jobs`` never reopens it), so it is read and counted once: its outcome goes
into the ``farm_runs_finished_total`` and ``farm_run_failures_total`` counters and, if it
completed, its summary may become the latest result of its board × benchmark × mode. A
finished sweep is read once too and then only remembered (label, size, submission time).
The first scrape after a start therefore reads every sweep's runs (the whole history: ~1 s
per 30,000 runs on a small server); the next ones read only what is still moving. The
counters are rebuilt from Redis at start, so they do not reset when the exporter restarts.

**What a scrape renders** (:mod:`controller.exposition`, prometheus-client's text byte for
byte): a family is kept, its text rendered once, for as long as what it is made of has not
changed: the run counters and the results until a run ends, the verdicts until a record
changes, a board's series (bar its last seen time) until its status, quarantine or
reservation does (an expired reservation included). Every scrape still reads all of it from
Redis: what changed there shows at the next scrape.

Concurrent scrapes are serialised (one lock). When Redis cannot be read, the scrape serves
``farm_exporter_redis_up 0`` and nothing else, rather than stale numbers.
"""

from __future__ import annotations

import gc
import json
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from rq.registry import DeferredJobRegistry, StartedJobRegistry

from controller import keys
from controller.exposition import Family, make_app
from controller.metrics import (
    DEFAULT_ADDR,
    EXPORTER,
    EXPORTER_PORT,
    INFO_LABELS,
    failure_category,
    ingest_counter_families,
    label_value,
)
from controller.metrics_http import MetricsAccess, serve
from controller.queueing import queue
from controller.reservations import Reservation
from controller.reservations import parse as parse_reservation
from controller.settings import Settings, redacted
from controller.sweeps import QUEUE_ORDER
from controller.verdicts import VERDICT_VALUES, VerdictRecord
from farm.catalog import BenchmarkError, get_benchmark
from farm.logs import get_logger

log = get_logger("controller.exporter")

BOARD_STATES = ("idle", "busy", "flashing", "offline")
HEALTH_STATES = ("good", "unknown", "bad")
LIVE_RUN_STATES = ("queued", "dispatched", "running")
#: A sweep without a label is shown under this one.
NO_LABEL = "unlabelled"
#: The run fields a scrape reads.
_RUN_FIELDS = ("board", "benchmark", "mode", "state", "reason", "finished_at", "summary")


@dataclass
class _Sweep:
    """What the collector remembers of a sweep."""

    label: str
    created: float
    total: int
    runs: list[str] = field(default_factory=list)
    done: int = 0
    """Runs of the sweep already counted as ended."""
    closed: bool = False
    """Finished and fully counted: never read again."""


@dataclass
class _Result:
    """A completed run's summary (JSON, parsed when first shown), kept as the latest of its
    board × benchmark × mode."""

    finished_at: float
    text: str
    _parsed: dict[str, Any] | None = None

    @property
    def summary(self) -> dict[str, Any]:
        if self._parsed is None:
            try:
                parsed = json.loads(self.text)
            except ValueError:
                parsed = None
            self._parsed = parsed if isinstance(parsed, dict) else {}
        return self._parsed


@dataclass(frozen=True)
class _BoardRow:
    """What a scrape reads of one board."""

    agent: str | None
    status: str | None
    last_seen: str | None
    quarantine: dict[str, str]
    reservation: Reservation | None
    """As stored, expired or not (the collector compares it with its clock)."""


def _check_families(counts: dict[str, str]) -> list[Metric]:
    """``farm_scheduled_health_checks_total`` from ``farm:checks:scheduled``
    (``board|outcome`` -> count)."""
    checks = _spec_family("farm_scheduled_health_checks_total")
    for field_name, count in sorted(counts.items()):
        board, _, outcome = field_name.rpartition("|")
        if board:
            checks.add_metric([board, outcome], _float(count))
    return [checks]


def _float(value: Any, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _spec_family(name: str) -> Metric:
    spec = EXPORTER[name]
    if spec.type == "counter":
        return CounterMetricFamily(spec.family, spec.help, labels=spec.labels)
    if spec.type == "info":
        ids = [label for label in spec.labels if label not in INFO_LABELS]
        return InfoMetricFamily(spec.family, spec.help, labels=ids)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


#: The board families, in the order served (then farm_board_last_seen_timestamp_seconds).
_BOARD_FAMILIES = (
    "farm_board_state",
    "farm_board_health",
    "farm_board_health_reason_info",
    "farm_board_quarantined",
    "farm_board_quarantine_reason_info",
    "farm_board_reserved",
    "farm_board_reservation_expiry_timestamp_seconds",
    "farm_board_reservation_info",
    "farm_board_firmware_info",
    "farm_board_info",
)


@dataclass
class _BoardSeries:
    """One board's series of :data:`_BOARD_FAMILIES` and what they were made of."""

    key: tuple[Any, ...]
    families: list[Family]

    @property
    def shown(self) -> bool:
        """Whether the board has series (a status that could be read)."""
        return bool(self.families[0].metric.samples)

    @property
    def agent(self) -> str:
        """The agent label of its series."""
        return str(self.families[0].metric.samples[0].labels["agent"])


def _one_board(board: str, row: _BoardRow, held: Reservation | None) -> list[Metric]:
    """:data:`_BOARD_FAMILIES` with one board's series (none without a readable status);
    ``held`` is its reservation if not past its end."""
    f = {name: _spec_family(name) for name in _BOARD_FAMILIES}
    families = list(f.values())
    if not row.status:
        return families
    try:
        status = json.loads(row.status)
    except ValueError:
        return families
    agent = row.agent or status.get("agent") or ""
    ids = [board, agent]
    state = status.get("state")
    health = status.get("health")
    for s in BOARD_STATES:
        f["farm_board_state"].add_metric([*ids, s], 1.0 if state == s else 0.0)
    for h in HEALTH_STATES:
        f["farm_board_health"].add_metric([*ids, h], 1.0 if health == h else 0.0)
    f["farm_board_quarantined"].add_metric(ids, 1.0 if row.quarantine else 0.0)
    if row.quarantine:
        f["farm_board_quarantine_reason_info"].add_metric(
            ids, {"reason": label_value(row.quarantine.get("reason"))}
        )
    f["farm_board_reserved"].add_metric(ids, 1.0 if held else 0.0)
    if held:
        f["farm_board_reservation_expiry_timestamp_seconds"].add_metric(ids, held.until)
        f["farm_board_reservation_info"].add_metric(
            ids, {"holder": label_value(held.holder), "note": label_value(held.note)}
        )
    f["farm_board_health_reason_info"].add_metric(
        ids,
        {"state": label_value(health), "reason": label_value(status.get("health_reason"))},
    )
    f["farm_board_firmware_info"].add_metric(
        ids,
        {"model": label_value(status.get("model")), "build": label_value(status.get("build"))},
    )
    system = status.get("system") or {}
    f["farm_board_info"].add_metric(
        ids,
        {
            "board_name": label_value(system.get("board_name")),
            "processor": label_value(system.get("processor_name")),
            "accelerator": label_value(system.get("accelerator")),
            "software": label_value(
                system.get("inference_framework") or system.get("software_libraries")
            ),
        },
    )
    return families


class FarmCollector:
    """Reads the farm's state from Redis at each scrape (see the module docstring).

    ``client`` must decode responses. ``queues`` are the RQ queues to report; ``clock`` gives
    the time heartbeat ages are measured against."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        queues: Sequence[str] = QUEUE_ORDER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.clock = clock
        self._queues = [
            (
                name,
                queue(name, client).key,
                DeferredJobRegistry.key_template.format(name),
                StartedJobRegistry.key_template.format(name),
            )
            for name in queues
        ]
        self._lock = threading.Lock()
        self._sweeps: dict[str, _Sweep] = {}
        self._counted: set[str] = set()
        """Ended runs of sweeps not yet closed, already counted."""
        self._finished: Counter[tuple[str, str, str, str]] = Counter()
        self._failures: Counter[tuple[str, str]] = Counter()
        self._latest: dict[tuple[str, str, str], _Result] = {}
        self._quality_scale: dict[str, float | None] = {}
        self._verdicts: dict[str, VerdictRecord] = {}
        """The latest judged sweep's record, by label (read again when another sweep is)."""
        self._boards: dict[str, _BoardSeries] = {}
        """Each board's series as the last scrape built them."""
        self._live: set[str] = set()
        """Runs of sweeps not yet closed read as queued, dispatched or running last time."""
        self._ended = 0
        """Ended runs counted since the start: the families made of them change with it."""
        self._verdicts_changed = 0
        """Changes of the verdict records kept: the verdict families change with it."""
        self._ended_families: tuple[int, list[Family], list[Family]] | None = None
        """The run counters' and the results' families, and the :attr:`_ended` they show."""
        self._verdict_families: tuple[int, list[Family]] | None = None
        """The verdict families, and the :attr:`_verdicts_changed` they show."""
        self.last_duration_s = 0.0

    # prometheus_client asks for this at registration; nothing to declare up front.
    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        """Every metric, read now (one scrape at a time)."""
        for family in self.families():
            yield family.metric

    def families(self) -> list[Family]:
        """Every metric family, read now (one scrape at a time); a family that did not change
        since the last scrape is the same :class:`Family`, its exposition text kept."""
        with self._lock:
            started = time.perf_counter()
            try:
                families = self._read()
                up = 1.0
            except (redis.RedisError, OSError) as exc:
                log.warning("exporter_redis_error", error=str(exc))
                families, up = [], 0.0
            self.last_duration_s = time.perf_counter() - started
        redis_up = _spec_family("farm_exporter_redis_up")
        redis_up.add_metric([], up)
        duration = _spec_family("farm_exporter_scrape_duration_seconds")
        duration.add_metric([], self.last_duration_s)
        return [*families, Family(redis_up), Family(duration)]

    # -- reading --------------------------------------------------------------------------------

    def _read(self) -> list[Family]:
        now = self.clock()
        c = self.client
        # 1: the indexes.
        pipe = c.pipeline(transaction=False)
        pipe.smembers(keys.AGENTS)
        pipe.smembers(keys.BOARDS)
        pipe.hgetall(keys.INGEST_COUNTERS)
        pipe.zrange(keys.SWEEPS, 0, -1)
        pipe.hgetall(keys.VERDICTS_LATEST)
        pipe.hgetall(keys.SCHEDULED_CHECKS)
        for _, queue_key, deferred_key, started_key in self._queues:
            pipe.llen(queue_key)
            pipe.zcard(deferred_key)
            pipe.zcard(started_key)
        agents_set, boards_set, ingest, sweep_ids, judged, checks, *queue_counts = pipe.execute()
        agents = sorted(agents_set)
        boards = sorted(boards_set)
        new_sweeps = [s for s in sweep_ids if s not in self._sweeps]
        open_sweeps = [s for s in sweep_ids if s in self._sweeps and not self._sweeps[s].closed]
        for label in [label for label in self._verdicts if label not in judged]:
            del self._verdicts[label]
            self._verdicts_changed += 1
        new_verdicts = [
            (label, sweep_id)
            for label, sweep_id in sorted(judged.items())
            if label not in self._verdicts or self._verdicts[label].sweep != sweep_id
        ]
        # A sweep judged again (an RQ retry, by hand) keeps its place in the index: its
        # record's time says whether the copy here is still the one in Redis.
        kept_verdicts = [
            (label, judged[label]) for label in sorted(self._verdicts) if label in judged
        ]
        kept_verdicts = [v for v in kept_verdicts if v not in new_verdicts]

        # 2: agents, boards, the sweeps not seen yet (hash and run list), the open sweeps' state.
        pipe = c.pipeline(transaction=False)
        for agent in agents:
            pipe.hmget(
                keys.agent(agent), ["state", "protocol", "software", "heartbeat", "last_seen"]
            )
        for board in boards:
            pipe.hmget(keys.board(board), ["agent", "status", "last_seen"])
            pipe.hgetall(keys.board_quarantine(board))
            pipe.hgetall(keys.board_reservation(board))
        for sweep_id in new_sweeps:
            pipe.hmget(keys.sweep(sweep_id), ["label", "created", "total", "state"])
            pipe.lrange(keys.sweep_runs(sweep_id), 0, -1)
        for sweep_id in open_sweeps:
            pipe.hget(keys.sweep(sweep_id), "state")
        for _, sweep_id in new_verdicts:
            pipe.hgetall(keys.sweep_verdict(sweep_id))
        for _, sweep_id in kept_verdicts:
            pipe.hget(keys.sweep_verdict(sweep_id), "judged_at")
        replies = iter(pipe.execute())
        agent_rows = [next(replies) for _ in agents]
        board_rows = []
        for board in boards:
            agent, status, last_seen = next(replies)
            quarantine, reservation = next(replies), next(replies)
            board_rows.append(
                _BoardRow(
                    agent, status, last_seen, quarantine, parse_reservation(board, reservation)
                )
            )
        sweep_state: dict[str, str | None] = {}
        for sweep_id in new_sweeps:
            label, created, total, state = next(replies)
            runs = next(replies)
            self._sweeps[sweep_id] = _Sweep(
                label=label or NO_LABEL,
                created=_float(created),
                total=int(_float(total, len(runs))),
                runs=runs,
            )
            sweep_state[sweep_id] = state
        for sweep_id in open_sweeps:
            sweep_state[sweep_id] = next(replies)
        for label, sweep_id in new_verdicts:
            self._remember_verdict(label, sweep_id, next(replies))
        rejudged = [
            (label, sweep_id)
            for label, sweep_id in kept_verdicts
            if _float(next(replies)) != self._verdicts[label].judged_at
        ]
        for label, sweep_id in rejudged:
            self._remember_verdict(label, sweep_id, c.hgetall(keys.sweep_verdict(sweep_id)))

        # 3: the runs of every sweep not closed that were not counted as ended yet. A run
        # live at the last scrape is read by its state alone (most of a running sweep's runs
        # are, scrape after scrape: a field instead of seven), then (4) the whole row of each
        # run that ended since, or that was not read yet.
        reading = [s for s in sweep_state if s in self._sweeps]
        pending = [
            (sweep_id, run_id)
            for sweep_id in reading
            for run_id in self._sweeps[sweep_id].runs
            if run_id not in self._counted
        ]
        was_live = [run_id for _, run_id in pending if run_id in self._live]
        states = dict(zip(was_live, self._each(was_live, "state"), strict=True))
        whole = [
            run_id
            for _, run_id in pending
            if run_id not in states or states[run_id] in keys.TERMINAL
        ]
        rows = {
            run_id: dict(zip(_RUN_FIELDS, row, strict=True))
            for run_id, row in zip(whole, self._each(whole, None), strict=True)
        }
        live: Counter[str] = Counter()
        for sweep_id, run_id in pending:
            run = rows.get(run_id)
            state = run["state"] if run is not None else states[run_id]
            if run is not None and state in keys.TERMINAL:
                self._count_ended(run)
                self._counted.add(run_id)
                self._sweeps[sweep_id].done += 1
            if state in LIVE_RUN_STATES:
                live[state] += 1
                self._live.add(run_id)
            else:
                self._live.discard(run_id)
        for sweep_id in reading:
            sweep = self._sweeps[sweep_id]
            if sweep_state.get(sweep_id) == "finished" and sweep.done >= len(sweep.runs):
                sweep.closed = True
                self._counted.difference_update(sweep.runs)
                sweep.runs = []

        # What only an ended run changes is built (and rendered) again only when one ended.
        if self._ended_families is None or self._ended_families[0] != self._ended:
            self._ended_families = (
                self._ended,
                [Family(m) for m in self._run_counter_families()],
                [Family(m) for m in self._result_families()],
            )
        if self._verdict_families is None or self._verdict_families[0] != self._verdicts_changed:
            self._verdict_families = (
                self._verdicts_changed,
                [Family(m) for m in self._build_verdict_families()],
            )
        _, run_counters, results = self._ended_families
        families = [Family(m) for m in self._agent_families(agents, agent_rows, now)]
        families += self._board_families(boards, board_rows, now)
        families += [
            Family(m) for m in [*_check_families(checks), *self._queue_families(queue_counts, live)]
        ]
        families += run_counters
        families += [Family(m) for m in self._sweep_families(len(sweep_ids))]
        families += results
        families += self._verdict_families[1]
        families += [
            Family(m)
            for m in ingest_counter_families(
                {k: int(_float(v)) for k, v in ingest.items()}, "farm_ingest"
            )
        ]
        return families

    def _each(self, run_ids: list[str], field_name: str | None) -> list[Any]:
        """One field (``None``: the fields a scrape reads) of each run, in one round trip."""
        if not run_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            if field_name is None:
                pipe.hmget(keys.run(run_id), _RUN_FIELDS)
            else:
                pipe.hget(keys.run(run_id), field_name)
        return pipe.execute()

    def _count_ended(self, run: dict[str, Any]) -> None:
        board, bench, mode, state = (
            run.get(k) or "" for k in ("board", "benchmark", "mode", "state")
        )
        self._ended += 1
        self._finished[(board, bench, mode, state)] += 1
        if state == "failed":
            self._failures[(board, failure_category(run.get("reason")))] += 1
        if state != "completed" or not run.get("summary"):
            return
        finished_at = _float(run.get("finished_at"))
        key = (board, bench, mode)
        latest = self._latest.get(key)
        if latest is None or finished_at >= latest.finished_at:
            self._latest[key] = _Result(finished_at, run["summary"])

    def _remember_verdict(self, label: str, sweep_id: str, raw: dict[str, str]) -> None:
        """Keep the label's latest verdict record; a record gone (its sweep trimmed) or
        unreadable shows nothing for the label."""
        self._verdicts.pop(label, None)
        self._verdicts_changed += 1
        if not raw:
            return
        try:
            self._verdicts[label] = VerdictRecord.from_hash(sweep_id, raw)
        except (ValueError, TypeError) as exc:
            log.warning("exporter_bad_verdict", sweep=sweep_id, error=str(exc))

    # -- families -------------------------------------------------------------------------------

    def _agent_families(
        self, agents: list[str], rows: list[list[str | None]], now: float
    ) -> list[Metric]:
        up = _spec_family("farm_agent_up")
        age = _spec_family("farm_agent_heartbeat_age_seconds")
        seen = _spec_family("farm_agent_last_seen_timestamp_seconds")
        info = _spec_family("farm_agent_info")
        backlog = _spec_family("farm_agent_journal_backlog_messages")
        uptime = _spec_family("farm_agent_uptime_seconds")
        for agent, (state, protocol, software, heartbeat, last_seen) in zip(
            agents, rows, strict=True
        ):
            up.add_metric([agent], 1.0 if state == "online" else 0.0)
            if last_seen:
                seen.add_metric([agent], _float(last_seen))
                age.add_metric([agent], max(0.0, now - _float(last_seen)))
            info.add_metric(
                [agent], {"software": label_value(software), "protocol": label_value(protocol)}
            )
            if heartbeat:
                try:
                    beat = json.loads(heartbeat)
                except ValueError:
                    continue
                backlog.add_metric([agent], _float(beat.get("backlog")))
                uptime.add_metric([agent], _float(beat.get("uptime_s")))
        return [up, age, seen, info, backlog, uptime]

    def _board_families(self, boards: list[str], rows: list[_BoardRow], now: float) -> list[Family]:
        # A board's series, bar its last seen time (busy boards' changes with every batch
        # of samples), change only with its status, quarantine or reservation: each board's
        # are built and rendered again only then, and the families put together from them.
        families = [_spec_family(name) for name in _BOARD_FAMILIES]
        lines: list[list[str]] = [[] for _ in _BOARD_FAMILIES]
        seen = _spec_family("farm_board_last_seen_timestamp_seconds")
        kept: dict[str, _BoardSeries] = {}
        for board, row in zip(boards, rows, strict=True):
            # A reservation past its end counts as gone at once, as for the scheduler.
            held = row.reservation if row.reservation and row.reservation.until > now else None
            key = (row.agent, row.status, tuple(sorted(row.quarantine.items())), held)
            series = self._boards.get(board)
            if series is None or series.key != key:
                series = _BoardSeries(key, [Family(m) for m in _one_board(board, row, held)])
            kept[board] = series
            for family, board_lines, own in zip(families, lines, series.families, strict=True):
                family.samples.extend(own.metric.samples)
                board_lines.append(own.lines)
            if series.shown and row.last_seen:
                seen.add_metric([board, series.agent], _float(row.last_seen))
        self._boards = kept
        return [
            *(Family(f, "".join(text)) for f, text in zip(families, lines, strict=True)),
            Family(seen),
        ]

    def _queue_families(self, counts: list[int], live: Counter[str]) -> list[Metric]:
        ready = _spec_family("farm_queue_jobs")
        deferred = _spec_family("farm_queue_deferred_jobs")
        started = _spec_family("farm_queue_started_jobs")
        for i, (name, *_) in enumerate(self._queues):
            ready.add_metric([name], float(counts[3 * i]))
            deferred.add_metric([name], float(counts[3 * i + 1]))
            started.add_metric([name], float(counts[3 * i + 2]))
        runs = _spec_family("farm_runs")
        for state in LIVE_RUN_STATES:
            runs.add_metric([state], float(live[state]))
        return [ready, deferred, started, runs]

    def _run_counter_families(self) -> list[Metric]:
        finished = _spec_family("farm_runs_finished_total")
        for labels, n in sorted(self._finished.items()):
            finished.add_metric(list(labels), float(n))
        failures = _spec_family("farm_run_failures_total")
        for labels, n in sorted(self._failures.items()):
            failures.add_metric(list(labels), float(n))
        return [finished, failures]

    def _sweep_families(self, submitted: int) -> list[Metric]:
        by_label: dict[str, list[_Sweep]] = {}
        for sweep in self._sweeps.values():
            by_label.setdefault(sweep.label, []).append(sweep)
        total = _spec_family("farm_sweeps_submitted_total")
        total.add_metric([], float(submitted))
        running_f = _spec_family("farm_sweeps_running")
        runs_f = _spec_family("farm_sweep_runs")
        done_f = _spec_family("farm_sweep_runs_done")
        ratio_f = _spec_family("farm_sweep_progress_ratio")
        start_f = _spec_family("farm_sweep_start_timestamp_seconds")
        for label, sweeps in sorted(by_label.items()):
            running = [s for s in sweeps if not s.closed]
            shown = running or [max(sweeps, key=lambda s: s.created)]
            planned = sum(s.total for s in shown)
            done = sum(s.total if s.closed else s.done for s in shown)
            running_f.add_metric([label], float(len(running)))
            runs_f.add_metric([label], float(planned))
            done_f.add_metric([label], float(done))
            ratio_f.add_metric([label], done / planned if planned else 1.0)
            start_f.add_metric([label], min(s.created for s in shown))
        return [total, running_f, runs_f, done_f, ratio_f, start_f]

    def _scale(self, benchmark: str) -> float | None:
        """What turns the summary's quality numbers into fractions: 1/100 for top-1 (percent),
        1 for AUC; None for an unknown benchmark and for sww01 (its target counts errors)."""
        if benchmark not in self._quality_scale:
            try:
                metric = get_benchmark(benchmark).metric
            except BenchmarkError:
                self._quality_scale[benchmark] = None
            else:
                # sww01's "target" is a count of errors, not a quality: no ratio to show.
                scale = {"top1": 0.01, "auc": 1.0}.get(metric)
                self._quality_scale[benchmark] = scale
        return self._quality_scale[benchmark]

    def _result_families(self) -> list[Metric]:
        names = (
            "farm_result_throughput_inferences_per_second",
            "farm_result_latency_seconds",
            "farm_result_inference_latency_seconds",
            "farm_result_early_stopping_latency_seconds",
            "farm_result_top1_accuracy_ratio",
            "farm_result_auc_ratio",
            "farm_result_quality_target_ratio",
            "farm_result_quality_target_met",
            "farm_result_energy_per_inference_joules",
            "farm_result_true_positives",
            "farm_result_false_negatives",
            "farm_result_false_positives",
            "farm_result_f1_ratio",
            "farm_result_duty_cycle_ratio",
            "farm_result_power_watts",
            "farm_result_valid",
            "farm_result_samples",
            "farm_result_timestamp_seconds",
            "farm_result_firmware_info",
        )
        f = {name: _spec_family(name) for name in names}

        def put(name: str, labels: list[str], value: Any, scale: float = 1.0) -> None:
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, int | float) and math.isfinite(value):
                f[name].add_metric(labels, float(value) * scale)

        for (board, bench, mode), result in sorted(self._latest.items()):
            s = result.summary
            labels = [board, bench, mode]
            put("farm_result_throughput_inferences_per_second", labels, s.get("throughput_ips"))
            put("farm_result_latency_seconds", labels, s.get("latency_ms"), 1e-3)
            for quantile, key in (("0.5", "p50_us"), ("0.9", "p90_us"), ("0.99", "p99_us")):
                put("farm_result_inference_latency_seconds", [*labels, quantile], s.get(key), 1e-6)
            put(
                "farm_result_early_stopping_latency_seconds",
                [*labels, "0.9"],
                s.get("p90_early_stop_us"),
                1e-6,
            )
            scale = self._scale(bench)
            if scale is not None:
                put("farm_result_top1_accuracy_ratio", labels, s.get("top1"), 0.01)
                put("farm_result_auc_ratio", labels, s.get("auc"))
                put("farm_result_quality_target_ratio", labels, s.get("target"), scale)
            put("farm_result_quality_target_met", labels, s.get("target_met"))
            put("farm_result_energy_per_inference_joules", labels, s.get("energy_uj"), 1e-6)
            for outcome in ("true_positives", "false_negatives", "false_positives"):
                put(f"farm_result_{outcome}", labels, s.get(outcome))
            put("farm_result_f1_ratio", labels, s.get("f1"))
            put("farm_result_duty_cycle_ratio", labels, s.get("duty_cycle"))
            put("farm_result_power_watts", labels, s.get("power_mw"), 1e-3)
            put("farm_result_valid", labels, bool(s.get("valid")))
            put("farm_result_samples", labels, s.get("samples"))
            put("farm_result_timestamp_seconds", labels, result.finished_at)
            firmware = s.get("firmware")
            if isinstance(firmware, dict):
                f["farm_result_firmware_info"].add_metric(
                    labels,
                    {
                        "image": label_value(firmware.get("image")),
                        "image_sha256": label_value((firmware.get("sha256") or "")[:12]),
                        "profile": label_value(firmware.get("profile")),
                        "dut_name": label_value(firmware.get("name")),
                        "software": label_value(firmware.get("software")),
                    },
                )
        return list(f.values())

    def _build_verdict_families(self) -> list[Metric]:
        verdict = _spec_family("farm_verdict")
        change = _spec_family("farm_verdict_change_ratio")
        regressions = _spec_family("farm_sweep_regressions")
        judged_at = _spec_family("farm_sweep_verdict_timestamp_seconds")
        info = _spec_family("farm_sweep_verdict_info")
        for label, record in sorted(self._verdicts.items()):
            shown = label or NO_LABEL
            for row in record.rows:
                value = VERDICT_VALUES.get(row.verdict)
                if value is None:  # new or missing: no run on one side
                    continue
                labels = [shown, row.board, row.benchmark, row.mode, row.metric]
                verdict.add_metric(labels, value)
                if isinstance(row.change_pct, int | float) and math.isfinite(row.change_pct):
                    change.add_metric(labels, row.change_pct / 100)
            regressions.add_metric([shown], float(record.regressions))
            judged_at.add_metric([shown], record.judged_at)
            info.add_metric(
                [shown, record.state],
                {
                    "sweep": label_value(record.sweep),
                    "baseline": label_value(record.baseline[-1] if record.baseline else ""),
                    # A link: never shortened (label_value would cut a long one).
                    "report_url": record.report_url,
                },
            )
        return [verdict, change, regressions, judged_at, info]


def make_registry(client: redis.Redis, **options: Any) -> tuple[CollectorRegistry, FarmCollector]:
    """A registry holding only the farm collector (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = FarmCollector(client, **options)
    registry.register(collector)  # type: ignore[arg-type]
    return registry, collector


def freeze_startup_objects() -> None:
    """Leave the objects alive now (modules, classes, functions: ~65,000, never garbage) out of
    the cyclic garbage collector's full collections, which otherwise walk them too every few
    scrapes: ~100 ms of a scrape at a thousand boards, a third of that without them. Called
    once, before serving; what is frozen is still freed when no longer referenced (only a
    cycle among these objects would stay)."""
    gc.collect()
    gc.freeze()


def main(
    settings: Settings,
    *,
    addr: str = DEFAULT_ADDR,
    port: int = EXPORTER_PORT,
    access: MetricsAccess | None = None,
) -> int:
    """``farm controller exporter``: serve ``/metrics`` until SIGINT or SIGTERM, protected as
    ``access`` says (a bearer token, TLS; default: neither)."""
    access = access or MetricsAccess()
    client = redis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
    )
    registry, collector = make_registry(client)
    freeze_startup_objects()
    try:
        server, _thread = serve(
            registry, port, addr, access, app=make_app(registry, collector.families)
        )
    except ValueError as exc:
        log.error("exporter_config_error", error=str(exc))
        return 2
    except OSError as exc:
        log.error("exporter_bind_failed", addr=addr, port=port, error=str(exc))
        return 2
    log.info(
        "exporter_serving",
        addr=addr,
        port=server.server_port,
        redis=redacted(settings.redis_url),
        token=access.token_file is not None,
        tls=access.tls_cert is not None,
    )
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()
        client.close()
    log.info("exporter_stopped")
    return 0
