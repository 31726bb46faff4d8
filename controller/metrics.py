"""The farm's Prometheus metrics: every name, type, help text and label set in one place, shared
by the exporter (``controller.exporter``, read from Redis at scrape time) and the ingest
processes (their live counters and the per-inference latency histogram).

Conventions (a test checks them on the exporter's output): every name starts with ``farm_``;
values are in base units (``_seconds``, ``_joules``, ``_ratio`` for fractions in [0, 1]); a
counter's samples end in ``_total``; metadata is a constant 1 in an ``_info`` metric; labels
come from a small, bounded set (:data:`LABELS`): never a run id, a sweep id or a sample seq.
A failure's free-text reason is folded into a short category (:func:`failure_category`), a
board's health reason is shortened and kept only in ``farm_board_health_reason_info``. The one sweep
id served is in ``farm_sweep_verdict_info``: one series per sweep label (its latest judged sweep),
which the verdict alert and the dashboard link to the report need.

Ingest serves its counters under ``farm_ingest_process_*`` (this process since it started);
the exporter serves the totals over every ingest process, kept in Redis, under
``farm_ingest_*``: a query never adds the two up by accident.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from controller.metrics_http import MetricsAccess, serve
from farm.logs import get_logger

log = get_logger("controller.metrics")

#: Every label name a farm metric may carry. ``kind`` is an ingest message kind (six values),
#: ``queue`` an RQ queue (three), ``quantile`` a latency percentile; ``label`` a sweep's label
#: (``nightly``: what a lab names its sweeps, not an id), ``metric`` a compared metric (six:
#: controller.verdicts); the ``*_info`` metrics carry their metadata (``software``, ``model``,
#: ...), one series per board, agent or sweep label.
LABELS = frozenset(
    {
        "agent",
        "board",
        "benchmark",
        "mode",
        "state",
        "reason",
        "kind",
        "queue",
        "quantile",
        "label",
        "metric",
        "le",
    }
)
#: Labels only ``*_info`` metrics carry (their values describe one board or agent, who holds
#: a board, or what produced a board's latest result: ``image_sha256`` is a 12-hex prefix,
#: never a run's id).
INFO_LABELS = frozenset(
    {
        "software",
        "protocol",
        "model",
        "build",
        "board_name",
        "processor",
        "accelerator",
        "image",
        "image_sha256",
        "profile",
        "dut_name",
        "holder",
        "note",
        "sweep",
        "baseline",
        "report_url",
    }
)
#: Longest label value the exporter emits (a health reason, a processor name...).
MAX_LABEL_VALUE = 120

#: Default ports: the exporter, and the one deploy/ gives the first ingest process
#: (``--metrics-port``; off unless given).
EXPORTER_PORT = 9108
INGEST_PORT = 9109
DEFAULT_ADDR = "127.0.0.1"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its name as exposed (counters with ``_total``, info metrics with
    ``_info``), its type, help text and label names."""

    name: str
    type: str  # gauge | counter | histogram | info
    help: str
    labels: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        """The family name prometheus_client builds it under (without ``_total``/``_info``)."""
        if self.type == "counter":
            return self.name.removesuffix("_total")
        if self.type == "info":
            return self.name.removesuffix("_info")
        return self.name


def _specs(*specs: MetricSpec) -> dict[str, MetricSpec]:
    return {s.name: s for s in specs}


_B = ("board", "agent")
_R = ("board", "benchmark", "mode")

#: What ``farm controller exporter`` serves, read from Redis at scrape time.
EXPORTER: Mapping[str, MetricSpec] = _specs(
    MetricSpec("farm_exporter_redis_up", "gauge", "1 if the last scrape could read Redis."),
    MetricSpec(
        "farm_exporter_scrape_duration_seconds", "gauge", "Time this scrape spent reading Redis."
    ),
    # agents
    MetricSpec("farm_agent_up", "gauge", "1 if the agent's last status is online.", ("agent",)),
    MetricSpec(
        "farm_agent_heartbeat_age_seconds",
        "gauge",
        "Seconds since the agent was last heard from (heartbeat or status).",
        ("agent",),
    ),
    MetricSpec(
        "farm_agent_last_seen_timestamp_seconds",
        "gauge",
        "When the agent was last heard from (unix time).",
        ("agent",),
    ),
    MetricSpec(
        "farm_agent_info",
        "info",
        "The agent's software version and protocol.",
        ("agent", "software", "protocol"),
    ),
    MetricSpec(
        "farm_agent_journal_backlog_messages",
        "gauge",
        "Messages the agent journalled and the broker has not acknowledged (last heartbeat).",
        ("agent",),
    ),
    MetricSpec(
        "farm_agent_uptime_seconds", "gauge", "The agent's uptime (last heartbeat).", ("agent",)
    ),
    # boards
    MetricSpec(
        "farm_board_state",
        "gauge",
        "1 for the board's current state (idle, busy, flashing, offline), 0 for the others.",
        (*_B, "state"),
    ),
    MetricSpec(
        "farm_board_health",
        "gauge",
        "1 for the board's current health (good, unknown, bad), 0 for the others.",
        (*_B, "state"),
    ),
    MetricSpec(
        "farm_board_health_reason_info",
        "info",
        "The board's health and its reason (shortened).",
        (*_B, "state", "reason"),
    ),
    MetricSpec(
        "farm_board_quarantined",
        "gauge",
        "1 while the controller keeps the board out of service after a failed scheduled health "
        "check (until farm board release), else 0.",
        _B,
    ),
    MetricSpec(
        "farm_board_quarantine_reason_info",
        "info",
        "Why a quarantined board is out of service (shortened; whole in farm status --board).",
        (*_B, "reason"),
    ),
    MetricSpec(
        "farm_board_reserved",
        "gauge",
        "1 while a person holds the board (farm board reserve: sweeps skip it), else 0.",
        _B,
    ),
    MetricSpec(
        "farm_board_reservation_expiry_timestamp_seconds",
        "gauge",
        "When a reserved board's reservation ends unless it is released or renewed (unix time).",
        _B,
    ),
    MetricSpec(
        "farm_board_reservation_info",
        "info",
        "Who holds a reserved board and why (the note, shortened).",
        (*_B, "holder", "note"),
    ),
    MetricSpec(
        "farm_scheduled_health_checks_total",
        "counter",
        "Health checks the controller scheduled, by how they ended: passed, failed (the board "
        "was quarantined), no_verdict (its agent did not answer or refused) or skipped (the "
        "board was taken before the check could start).",
        ("board", "state"),
    ),
    MetricSpec(
        "farm_board_firmware_info",
        "info",
        "The firmware the board holds: model and build (performance or energy).",
        (*_B, "model", "build"),
    ),
    MetricSpec(
        "farm_board_info",
        "info",
        "The board's system description (for the results table).",
        (*_B, "board_name", "processor", "accelerator", "software"),
    ),
    MetricSpec(
        "farm_board_last_seen_timestamp_seconds",
        "gauge",
        "When the board's status last changed or was confirmed (unix time).",
        _B,
    ),
    # queues and runs
    MetricSpec("farm_queue_jobs", "gauge", "Run jobs ready in the RQ queue.", ("queue",)),
    MetricSpec(
        "farm_queue_deferred_jobs",
        "gauge",
        "Run jobs waiting for the board's previous run (RQ deferred registry).",
        ("queue",),
    ),
    MetricSpec("farm_queue_started_jobs", "gauge", "Run jobs a worker is executing.", ("queue",)),
    MetricSpec(
        "farm_runs",
        "gauge",
        "Unfinished runs by state (queued, dispatched, running).",
        ("state",),
    ),
    MetricSpec(
        "farm_runs_finished_total",
        "counter",
        "Runs that ended, by outcome (completed, failed, cancelled).",
        (*_R, "state"),
    ),
    MetricSpec(
        "farm_run_failures_total",
        "counter",
        "Failed runs by the category of their last reason.",
        ("board", "reason"),
    ),
    # sweeps
    MetricSpec("farm_sweeps_submitted_total", "counter", "Sweeps ever submitted."),
    MetricSpec(
        "farm_sweeps_running",
        "gauge",
        "Sweeps of this label still running.",
        ("label",),
    ),
    MetricSpec(
        "farm_sweep_runs",
        "gauge",
        "Runs planned: the running sweeps of this label, else its latest sweep.",
        ("label",),
    ),
    MetricSpec(
        "farm_sweep_runs_done",
        "gauge",
        "Runs ended (any outcome): the running sweeps of this label, else its latest sweep.",
        ("label",),
    ),
    MetricSpec(
        "farm_sweep_progress_ratio",
        "gauge",
        "farm_sweep_runs_done / farm_sweep_runs.",
        ("label",),
    ),
    MetricSpec(
        "farm_sweep_start_timestamp_seconds",
        "gauge",
        "When the oldest running sweep of this label (else its latest) was submitted.",
        ("label",),
    ),
    # the latest completed run's results per board x benchmark x mode
    MetricSpec(
        "farm_result_throughput_inferences_per_second",
        "gauge",
        "Performance mode: median throughput, as the official runner computes it; sww01: its "
        "estimated throughput, 1 / mean processing time of a frame.",
        _R,
    ),
    MetricSpec(
        "farm_result_latency_seconds",
        "gauge",
        "Performance mode: the published latency, 1 / median throughput (sww01: 1 / estimated "
        "throughput).",
        _R,
    ),
    MetricSpec(
        "farm_result_inference_latency_seconds",
        "gauge",
        "Latency mode (supplemental): per-inference latency percentiles (LoadGen rules).",
        (*_R, "quantile"),
    ),
    MetricSpec(
        "farm_result_early_stopping_latency_seconds",
        "gauge",
        "Latency mode (supplemental): LoadGen's early-stopping estimate of the percentile.",
        (*_R, "quantile"),
    ),
    MetricSpec(
        "farm_result_top1_accuracy_ratio",
        "gauge",
        "Accuracy mode (classifiers): top-1 as the checker reads it, as a fraction.",
        _R,
    ),
    MetricSpec(
        "farm_result_auc_ratio",
        "gauge",
        "Accuracy mode (anomaly detection): ROC AUC as the checker reads it.",
        _R,
    ),
    MetricSpec(
        "farm_result_quality_target_ratio",
        "gauge",
        "Accuracy mode: the closed-division target (top-1 fraction or AUC).",
        _R,
    ),
    MetricSpec(
        "farm_result_quality_target_met",
        "gauge",
        "Accuracy mode: 1 if the result meets its target as the checker decides, else 0.",
        _R,
    ),
    MetricSpec(
        "farm_result_energy_per_inference_joules",
        "gauge",
        "Energy mode: median energy per inference.",
        _R,
    ),
    MetricSpec(
        "farm_result_true_positives",
        "gauge",
        "sww01 (its energy stream): wakewords detected, as the checker reads them.",
        _R,
    ),
    MetricSpec(
        "farm_result_false_negatives",
        "gauge",
        "sww01: wakewords missed (closed division: at most 8).",
        _R,
    ),
    MetricSpec(
        "farm_result_false_positives",
        "gauge",
        "sww01: detections of no wakeword, after the 1 s debounce (closed division: at most 8).",
        _R,
    ),
    MetricSpec(
        "farm_result_f1_ratio",
        "gauge",
        "sww01: F1 = 2 TP / (2 TP + FP + FN), the checker's accuracy for it.",
        _R,
    ),
    MetricSpec(
        "farm_result_duty_cycle_ratio",
        "gauge",
        "sww01: the DUT's processing duty cycle over its first 100 frames.",
        _R,
    ),
    MetricSpec(
        "farm_result_power_watts",
        "gauge",
        "sww01 (energy mode): mean power over the stream, its energy metric.",
        _R,
    ),
    MetricSpec(
        "farm_result_valid",
        "gauge",
        "1 if the run's result could go into a submission (official rules), else 0.",
        _R,
    ),
    MetricSpec("farm_result_samples", "gauge", "Samples the run was scored from.", _R),
    MetricSpec("farm_result_timestamp_seconds", "gauge", "When the run finished (unix time).", _R),
    MetricSpec(
        "farm_result_firmware_info",
        "info",
        "What produced the latest result: the firmware image's file name and the first 12 hex "
        "digits of its SHA-256, the DUT's profile and name, the agent's version.",
        (*_R, "image", "image_sha256", "profile", "dut_name", "software"),
    ),
    # the verdicts of the latest judged sweep of each label (controller.judge)
    MetricSpec(
        "farm_verdict",
        "gauge",
        "The label's latest judged sweep against its baseline, per metric: -1 worse, 0 same, "
        "+1 better.",
        ("label", *_R, "metric"),
    ),
    MetricSpec(
        "farm_verdict_change_ratio",
        "gauge",
        "The change behind that verdict, relative to the baseline (-0.03: 3 % lower).",
        ("label", *_R, "metric"),
    ),
    MetricSpec(
        "farm_sweep_regressions",
        "gauge",
        "Metrics judged worse in the label's latest judged sweep.",
        ("label",),
    ),
    MetricSpec(
        "farm_sweep_verdict_timestamp_seconds",
        "gauge",
        "When the label's latest judged sweep was judged (unix time).",
        ("label",),
    ),
    MetricSpec(
        "farm_sweep_verdict_info",
        "info",
        "The label's latest judged sweep: its id, its newest baseline sweep, its state (judged, "
        "or no baseline on a label's first night) and the URL of its report.",
        ("label", "state", "sweep", "baseline", "report_url"),
    ),
    # ingest totals over every process (Redis)
    MetricSpec(
        "farm_ingest_accepted_total",
        "counter",
        "Messages stored, by kind, by every ingest process.",
        ("kind",),
    ),
    MetricSpec(
        "farm_ingest_rejected_total",
        "counter",
        "Messages rejected, by reason, by every ingest process.",
        ("reason",),
    ),
    MetricSpec("farm_ingest_samples_total", "counter", "Samples stored (new ones)."),
    MetricSpec(
        "farm_ingest_duplicate_samples_total",
        "counter",
        "Samples received again with the same value (a resend: nothing changed).",
    ),
    MetricSpec(
        "farm_ingest_conflicting_samples_total",
        "counter",
        "Samples received again with another value (the first one was kept).",
    ),
    MetricSpec(
        "farm_ingest_cleared_total",
        "counter",
        "Retained statuses cleared (an empty retained message), by kind.",
        ("kind",),
    ),
    MetricSpec(
        "farm_ingest_agents_refused_total",
        "counter",
        "Agents refused for speaking another protocol version.",
    ),
    MetricSpec(
        "farm_ingest_other_total",
        "counter",
        "Any other ingest counter, by its name.",
        ("reason",),
    ),
)

#: What an ingest process serves (``farm controller ingest --metrics-port``): this process only.
INGEST: Mapping[str, MetricSpec] = _specs(
    MetricSpec(
        "farm_inference_latency_seconds",
        "histogram",
        "Per-inference DUT-timed latency of every single-inference sample stored (accuracy "
        "and latency modes), live.",
        ("board", "benchmark"),
    ),
    MetricSpec(
        "farm_ingest_process_messages_total", "counter", "Messages handled by this process."
    ),
    MetricSpec(
        "farm_ingest_process_accepted_total",
        "counter",
        "Messages stored by this process, by kind.",
        ("kind",),
    ),
    MetricSpec(
        "farm_ingest_process_rejected_total",
        "counter",
        "Messages this process rejected, by reason.",
        ("reason",),
    ),
    MetricSpec("farm_ingest_process_samples_total", "counter", "Samples this process stored."),
    MetricSpec(
        "farm_ingest_process_duplicate_samples_total",
        "counter",
        "Samples this process received again with the same value.",
    ),
    MetricSpec(
        "farm_ingest_process_conflicting_samples_total",
        "counter",
        "Samples this process received again with another value.",
    ),
    MetricSpec(
        "farm_ingest_process_cleared_total",
        "counter",
        "Retained statuses cleared, by kind.",
        ("kind",),
    ),
    MetricSpec(
        "farm_ingest_process_agents_refused_total",
        "counter",
        "Agents this process refused (protocol version).",
    ),
    MetricSpec(
        "farm_ingest_process_redis_retries_total",
        "counter",
        "Messages retried because Redis was unavailable.",
    ),
    MetricSpec(
        "farm_ingest_process_qos0_dropped_total",
        "counter",
        "QoS 0 messages (heartbeats) dropped because the local queue was full.",
    ),
    MetricSpec(
        "farm_ingest_process_other_total",
        "counter",
        "Any other counter of this process, by its name.",
        ("reason",),
    ),
    MetricSpec(
        "farm_ingest_process_queued_messages",
        "gauge",
        "Messages received and not yet handled.",
    ),
)

#: Per-inference latency buckets (s): 1-2-5 steps from 100 µs (ad01 on a fast core) to 5 s.
LATENCY_BUCKETS = (
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)

# -- failure reasons -> bounded categories -----------------------------------------------------

#: (category, pattern) tried in order on a failed run's last reason (controller.jobs and the
#: reaper write them; an agent's error arrives as ``<kind>: <reason>``).
FAILURE_CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("cancelled", r"^cancelled"),
        ("attempts_exhausted", r"^gave up after"),
        ("lease_busy", r"is leased by another run"),
        ("board_held", r"takes no runs: "),
        ("lease_lost", r"lease was lost"),
        ("worker_lost", r"worker running it was lost"),
        ("agent_rejected", r"the agent rejected the run"),
        ("agent_offline", r"went offline during the run"),
        ("agent_restarted", r"agent restarted during the run"),
        ("timeout", r"^no result within"),
        ("samples_missing", r"samples never arrived"),
        ("digest_mismatch", r"do not match the agent's digest"),
        ("scoring", r"^cannot score the run"),
        ("broker_unavailable", r"^broker "),
        ("device_error", r"^device: "),
        ("input_error", r"^input: "),
        ("infrastructure_error", r"^infrastructure: "),
    )
)


def failure_category(reason: str | None) -> str:
    """A failure's reason as one of a few categories (``other`` when none matches)."""
    if not reason:
        return "unknown"
    for name, pattern in FAILURE_CATEGORIES:
        if pattern.search(reason):
            return name
    return "other"


def label_value(value: Any) -> str:
    """A label value from free text: one line, at most :data:`MAX_LABEL_VALUE` characters."""
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= MAX_LABEL_VALUE else text[: MAX_LABEL_VALUE - 1] + "…"


# -- ingest counters ---------------------------------------------------------------------------

#: Message-kind counter suffixes (``controller.ingest.LABELS`` values).
_KINDS = (
    "agent_status",
    "heartbeat",
    "command_ack",
    "board_status",
    "sample_batch",
    "run_event",
    "trace_chunk",
)


def ingest_counter_families(counters: Mapping[str, int], prefix: str) -> list[Metric]:
    """Ingest's counter names (``accepted_<kind>``, ``rejected_<reason>``, ``accepted_samples``
    ...) as metric families named ``<prefix>_...`` (``farm_ingest`` for the totals in Redis,
    ``farm_ingest_process`` for one process's own)."""
    specs = EXPORTER if prefix == "farm_ingest" else INGEST

    def family(suffix: str) -> CounterMetricFamily:
        spec = specs[f"{prefix}_{suffix}_total"]
        return CounterMetricFamily(spec.family, spec.help, labels=spec.labels)

    accepted = family("accepted")
    rejected = family("rejected")
    cleared = family("cleared")
    other = family("other")
    plain = {
        "accepted_samples": family("samples"),
        "duplicate_samples": family("duplicate_samples"),
        "conflicting_samples": family("conflicting_samples"),
        "refused_agents": family("agents_refused"),
    }
    if prefix == "farm_ingest_process":
        plain["redis_retries"] = family("redis_retries")
        plain["dropped_qos0"] = family("qos0_dropped")
        plain["handled"] = family("messages")
    for kind in _KINDS:  # every kind present, so rates are 0 rather than absent
        accepted.add_metric([kind], float(counters.get(f"accepted_{kind}", 0)))
    for name, value in sorted(counters.items()):
        if name in plain:
            continue
        if name.startswith("accepted_") and name.removeprefix("accepted_") in _KINDS:
            continue
        if name.startswith("rejected_"):
            rejected.add_metric([name.removeprefix("rejected_")], float(value))
        elif name.startswith("cleared_"):
            cleared.add_metric([name.removeprefix("cleared_")], float(value))
        else:
            other.add_metric([label_value(name)], float(value))
    for name, fam in plain.items():
        fam.add_metric([], float(counters.get(name, 0)))
    if not rejected.samples:
        rejected.add_metric(["none"], 0.0)  # so `rate(...)` has a series to work on
    return [accepted, rejected, cleared, other, *plain.values()]


# -- the ingest process's own /metrics ---------------------------------------------------------


class _IngestCollector:
    """Ingest's live :class:`collections.Counter` and queue size, read at scrape time."""

    def __init__(self, counters: Mapping[str, int], queued: Callable[[], int]) -> None:
        self.counters = counters
        self.queued = queued

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snapshot: dict[str, int] = {}
        for _ in range(5):  # the event loop thread may add a key meanwhile
            with contextlib.suppress(RuntimeError):
                snapshot = dict(self.counters)
                break
        yield from ingest_counter_families(snapshot, "farm_ingest_process")
        spec = INGEST["farm_ingest_process_queued_messages"]
        queued = GaugeMetricFamily(spec.name, spec.help)
        queued.add_metric([], float(self.queued()))
        yield queued


class _LatencyHistogram:
    """The per-inference latency histogram by board and benchmark, updated a batch at a time:
    prometheus-client's ``Histogram`` observes one value per call (~1.5 µs, 0.3 ms for a
    200-sample batch) and has no supported way to add a batch's bucket counts. Exposed as
    the family that ``Histogram`` exposed (the same name, labels, buckets, ``_sum``,
    ``_count`` and ``_created``)."""

    def __init__(self, spec: MetricSpec, buckets: tuple[float, ...]) -> None:
        self.spec = spec
        self.bounds = buckets
        self._les = [*(floatToGoString(b) for b in buckets), "+Inf"]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], list[Any]] = {}
        """Labels -> [per-bucket counts (not cumulative; the last one past every bound),
        sum, creation time]."""
        self._lock = threading.Lock()
        """Held by an update (the event loop) and a scrape (the server's thread)."""

    def observe(self, labels: tuple[str, ...], values: Iterable[float]) -> int:
        """Add ``values`` to the series of ``labels``; returns how many."""
        bounds, counts, total = self.bounds, [0] * (len(self.bounds) + 1), 0.0
        for value in values:
            # Prometheus buckets are "<= le": the first bound not below the value.
            counts[bisect.bisect_left(bounds, value)] += 1
            total += value
        observed = sum(counts)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [[0] * len(counts), 0.0, time.time()]
            series[0] = [a + b for a, b in zip(series[0], counts, strict=True)]
            series[1] += total
        return observed

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = [(k, list(v[0]), v[1], v[2]) for k, v in self._series.items()]
        family = HistogramMetricFamily(self.spec.name, self.spec.help, labels=self.spec.labels)
        for labels, counts, total, created in snapshot:
            cumulative, running = [], 0
            for le, count in zip(self._les, counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            family.add_metric(list(labels), cumulative, total)
            family.samples.append(
                Sample(
                    f"{self.spec.name}_created",
                    dict(zip(self.spec.labels, labels, strict=True)),
                    created,
                )
            )
        yield family


class IngestMetrics:
    """An ingest process's metrics: its counters (read live from ``counters``) and the
    per-inference latency histogram by board and benchmark, in a registry of their own."""

    def __init__(self, counters: Mapping[str, int], queued: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = _LatencyHistogram(INGEST["farm_inference_latency_seconds"], LATENCY_BUCKETS)
        self.registry.register(self.latency)  # type: ignore[arg-type]
        self.registry.register(_IngestCollector(counters, queued))  # type: ignore[arg-type]
        self._server: Any = None
        self._lock = threading.Lock()

    def observe_latencies(
        self, board: str | None, benchmark: str | None, latencies_us: Iterable[float | None]
    ) -> int:
        """Observe a batch's per-inference latencies (µs; ``None``: a sample that is not one
        inference's, see ``farm.messages.StorableBatch.latencies_us``), in one update. Returns
        how many were observed."""
        if not board or not benchmark:
            return 0
        return self.latency.observe(
            (board, benchmark), [v / 1e6 for v in latencies_us if v is not None]
        )

    def serve(
        self, port: int, addr: str = DEFAULT_ADDR, access: MetricsAccess | None = None
    ) -> int:
        """Serve ``/metrics`` on ``addr:port`` from a thread (answers while the event loop
        is busy), protected as ``access`` says; returns the port (useful with port 0)."""
        with self._lock:
            if self._server is None:
                self._server, _ = serve(
                    port=port, addr=addr, registry=self.registry, access=access or MetricsAccess()
                )
            return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving."""
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
