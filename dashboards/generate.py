"""The tinyfarm Grafana dashboards, generated from code with grafana-foundation-sdk.

    python -m dashboards.generate           # (re)write dashboards/{fleet,benchmarks,board}.json
    python -m dashboards.generate --check   # exit 1 if a committed file differs

The committed JSON is what Grafana loads (deploy/grafana/provisioning); a test checks that it
equals this generator's output, so edit this file and regenerate, never the JSON by hand.

Classic dashboard JSON, schema version 41 (what grafana-foundation-sdk's "Grafana next"
build, pinned in pyproject.toml, writes). Every panel queries the datasource chosen in the
``datasource`` variable (type prometheus). The metrics are those of ``controller.metrics``.

- **fleet** (``tinyfarm-fleet``): agents and boards up, board states and health (with the
  reason), firmware, who holds which board (reservations with their holder and end,
  quarantines with their reason) and how the scheduled health checks ended, queues, runs by
  state and outcome, failure reasons, sweep progress, the latest verdicts of each sweep label
  (linking to the sweep's report), ingest rates and rejects. Variables: agent, board.
- **benchmarks** (``tinyfarm-benchmarks``): one row per benchmark (repeated over the
  ``benchmark`` variable), every board side by side: published latency, throughput,
  per-inference p90 and its early-stopping estimate, accuracy or AUC and its margin over the
  target, energy per inference, and a results table. Variables: benchmark, board.
- **board** (``tinyfarm-board``): one board: state, health, firmware, its agent, who holds it
  (its reservation or quarantine), the nightly history of every result, and the live
  per-inference latency histogram (heatmap) and its percentiles from ingest. Variables:
  board, benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    TableSortByFieldState,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.heatmap import YAxisConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    DataSourceRef,
    StackingMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
TAGS = ["tinyfarm"]
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
REF_IDS = "ABCDEFGHIJ"

# -- building blocks -----------------------------------------------------------------------------


def query(
    expr: str,
    legend: str = "",
    *,
    ref: str = "A",
    instant: bool = False,
    fmt: PromQueryFormat | None = None,
) -> Dataquery:
    """A Prometheus query on the dashboard's datasource."""
    q = Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    q = q.instant() if instant else q.range()
    if fmt is not None:
        q = q.format(fmt)
    return q


def _targets(panel: Any, queries: list[tuple[str, str]], **options: Any) -> Any:
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, ref=REF_IDS[i], **options))
    return panel


def _thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


GREEN = _thresholds((None, "green"))


def ts(
    title: str,
    queries: list[tuple[str, str]],
    *,
    unit: str = "short",
    description: str = "",
    w: int = 12,
    h: int = 8,
    stacked: bool = False,
    minimum: float | None = None,
) -> timeseries.Panel:
    """A time series panel."""
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .fill_opacity(10)
        .thresholds(GREEN)
    )
    if description:
        panel = panel.description(description)
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(60)
    if minimum is not None:
        panel = panel.min(minimum)
    return _targets(panel, queries)


def stat_panel(
    title: str,
    queries: list[tuple[str, str]],
    *,
    unit: str = "short",
    description: str = "",
    w: int = 6,
    h: int = 4,
    text: BigValueTextMode = BigValueTextMode.VALUE_AND_NAME,
    thresholds: ThresholdsConfig = GREEN,
) -> stat.Panel:
    """A stat panel (last value of each series)."""
    panel = (
        stat.Panel()
        .title(title)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .text_mode(text)
        .graph_mode(BigValueGraphMode.NONE)
        .color_mode(BigValueColorMode.VALUE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds)
    )
    if description:
        panel = panel.description(description)
    return _targets(panel, queries, instant=True)


def bars(
    title: str,
    queries: list[tuple[str, str]],
    *,
    unit: str = "short",
    description: str = "",
    w: int = 12,
    h: int = 8,
    minimum: float | None = 0,
    maximum: float | None = None,
    thresholds: ThresholdsConfig = GREEN,
) -> bargauge.Panel:
    """A horizontal bar gauge: one bar per series (board side by side)."""
    panel = (
        bargauge.Panel()
        .title(title)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .orientation(VizOrientation.HORIZONTAL)
        .display_mode(BarGaugeDisplayMode.BASIC)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds)
    )
    if description:
        panel = panel.description(description)
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return _targets(panel, queries, instant=True)


def table_panel(
    title: str,
    queries: list[tuple[str, str]],
    *,
    rename: dict[str, str] | None = None,
    hide: tuple[str, ...] = ("Time", "__name__"),
    merge: bool = False,
    description: str = "",
    w: int = 12,
    h: int = 8,
) -> table.Panel:
    """A table of instant queries (format table): labels as columns; with ``merge``, the
    queries' values side by side in one row per label set."""
    panel = table.Panel().title(title).datasource(DS).span(w).height(h)
    if description:
        panel = panel.description(description)
    transformations = []
    if merge:
        transformations.append(DataTransformerConfig(id_val="merge", options={}))
    transformations.append(
        DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {name: True for name in hide},
                "renameByName": rename or {},
            },
        )
    )
    panel = panel.transformations(transformations)
    return _targets(panel, queries, instant=True, fmt=PromQueryFormat.TABLE)


def reservations_table(selector: str, *, w: int, h: int = 8) -> table.Panel:
    """Who holds each reserved board of ``selector``, until when and why."""
    return table_panel(
        "Reserved: who, until when, why",
        [
            (f"farm_board_reservation_info{{{selector}}}", ""),
            (f"farm_board_reservation_expiry_timestamp_seconds{{{selector}}} * 1000", ""),
        ],
        merge=True,
        hide=("Time", "__name__", "Value #A", "instance", "job"),
        rename={"Value #B": "until"},
        description="farm board reserve BOARD --for 2h --note TEXT: sweeps skip the board "
        "until it expires, its holder releases it or the holder's console disappears.",
        w=w,
        h=h,
    ).override_by_name("until", [DynamicConfigValue("unit", "dateTimeAsIso")])


def quarantine_table(selector: str, *, w: int, h: int = 8) -> table.Panel:
    """Why each quarantined board of ``selector`` is out of service."""
    return table_panel(
        "Quarantined and why",
        [(f"farm_board_quarantine_reason_info{{{selector}}}", "")],
        hide=("Time", "__name__", "Value", "instance", "job"),
        description="A board that failed a scheduled health check takes no runs until "
        "farm board release BOARD passes a check (FarmBoardQuarantined fires meanwhile).",
        w=w,
        h=h,
    )


def report_link() -> DashboardLink:
    """A data link to the row's ``report_url`` (farm_sweep_verdict_info's label), in a new tab."""
    return (
        DashboardLink("Open the sweep's report")
        .type(DashboardLinkType.LINK)
        .url("${__data.fields.report_url}")
        .target_blank(True)
    )


#: farm_verdict's values as words, coloured.
VERDICT_WORDS = ValueMap(
    {
        "-1": ValueMappingResult(text="worse", color="red", index=0),
        "0": ValueMappingResult(text="same", color="text", index=1),
        "1": ValueMappingResult(text="better", color="green", index=2),
    }
)


def datasource_variable() -> DatasourceVariable:
    return DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def label_variable(name: str, query_text: str, *, label: str, multi: bool = True) -> QueryVariable:
    """A variable listing a label's values (``label_values(metric{...}, label)``)."""
    variable = (
        QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query_text)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        variable = variable.multi(True).include_all(True).all_value(".*")
    return variable


def base(uid: str, title: str, description: str) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-24h", "now")
        .timezone("browser")
        .link(
            DashboardLink("tinyfarm")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
        .with_variable(datasource_variable())
    )


# -- fleet ---------------------------------------------------------------------------------------

A = 'agent=~"$agent"'
AB = 'agent=~"$agent", board=~"$board"'


def fleet() -> Dashboard:
    return (
        base(
            "tinyfarm-fleet",
            "tinyfarm / fleet",
            "Agents and boards, queues, runs, sweeps and ingest of the tinyfarm device farm.",
        )
        .with_variable(label_variable("agent", "label_values(farm_agent_up, agent)", label="Agent"))
        .with_variable(
            label_variable("board", f"label_values(farm_board_state{{{A}}}, board)", label="Board")
        )
        .with_row(Row("Agents and boards"))
        .with_panel(
            stat_panel(
                "Agents online",
                [
                    (f"sum(farm_agent_up{{{A}}})", "online"),
                    (f"count(farm_agent_up{{{A}}})", "known"),
                ],
            )
        )
        .with_panel(
            stat_panel(
                "Boards by state",
                [(f"sum by (state) (farm_board_state{{{AB}}})", "{{state}}")],
            )
        )
        .with_panel(
            stat_panel(
                "Boards by health",
                [(f"sum by (state) (farm_board_health{{{AB}}})", "{{state}}")],
                thresholds=_thresholds((None, "green")),
            )
        )
        .with_panel(
            stat_panel(
                "Exporter",
                [
                    ("min(farm_exporter_redis_up)", "Redis readable"),
                    ("max(farm_exporter_scrape_duration_seconds)", "scrape (s)"),
                ],
                description="farm controller exporter: 1 while it can read Redis, and the "
                "time its last scrape spent reading it.",
            )
        )
        .with_panel(
            ts(
                "Seconds since each agent was last heard from",
                [(f"farm_agent_heartbeat_age_seconds{{{A}}}", "{{agent}}")],
                unit="s",
                description="Heartbeats come every heartbeat_s (10 s by default).",
            )
        )
        .with_panel(
            ts(
                "Boards by state",
                [(f"sum by (state) (farm_board_state{{{AB}}})", "{{state}}")],
                stacked=True,
            )
        )
        .with_panel(
            table_panel(
                "Board health and its reason",
                [(f"farm_board_health_reason_info{{{AB}}}", "")],
                hide=("Time", "__name__", "Value", "instance", "job"),
                rename={"state": "health"},
            )
        )
        .with_panel(
            table_panel(
                "Firmware on each board",
                [(f"farm_board_firmware_info{{{AB}}}", "")],
                hide=("Time", "__name__", "Value", "instance", "job"),
            )
        )
        .with_panel(
            ts(
                "Agent journal backlog (messages not yet acknowledged by the broker)",
                [(f"farm_agent_journal_backlog_messages{{{A}}}", "{{agent}}")],
            )
        )
        .with_row(Row("Reservations, quarantine and scheduled health checks"))
        .with_panel(
            stat_panel(
                "Boards held",
                [
                    (f"sum(farm_board_reserved{{{AB}}})", "reserved"),
                    (f"sum(farm_board_quarantined{{{AB}}})", "quarantined"),
                ],
                thresholds=_thresholds((None, "green"), (1, "orange")),
                description="Boards a person reserved (farm board reserve) and boards the "
                "controller quarantined after a failed scheduled health check: sweeps skip "
                "both.",
                w=4,
                h=8,
            )
        )
        .with_panel(reservations_table(AB, w=10))
        .with_panel(quarantine_table(AB, w=10))
        .with_panel(
            bars(
                "Scheduled health checks by outcome (since records began)",
                [
                    (
                        'sum by (state) (farm_scheduled_health_checks_total{board=~"$board"})',
                        "{{state}}",
                    )
                ],
                description="Checks the controller ran on idle boards nobody asked about: "
                "failed ones quarantined their board; no_verdict: its agent did not answer; "
                "skipped: the board was taken before the check started.",
                w=24,
                h=6,
            )
        )
        .with_row(Row("Queues and runs"))
        .with_panel(
            ts(
                "Run jobs in the queues",
                [
                    ("sum by (queue) (farm_queue_jobs)", "{{queue}} ready"),
                    ("sum by (queue) (farm_queue_deferred_jobs)", "{{queue}} waiting for a board"),
                    ("sum by (queue) (farm_queue_started_jobs)", "{{queue}} executing"),
                ],
                w=8,
            )
        )
        .with_panel(
            ts("Unfinished runs by state", [("sum by (state) (farm_runs)", "{{state}}")], w=8)
        )
        .with_panel(
            ts(
                "Runs ending per hour, by outcome",
                [
                    (
                        "sum by (state) (rate(farm_runs_finished_total"
                        '{board=~"$board"}[$__rate_interval])) * 3600',
                        "{{state}}",
                    )
                ],
                w=8,
            )
        )
        .with_panel(
            bars(
                "Failed runs by reason (since records began)",
                [('sum by (reason) (farm_run_failures_total{board=~"$board"})', "{{reason}}")],
                thresholds=_thresholds((None, "orange")),
            )
        )
        .with_panel(
            bars(
                "Failed runs by board (since records began)",
                [
                    (
                        'sum by (board) (farm_runs_finished_total{board=~"$board", '
                        'state="failed"})',
                        "{{board}}",
                    )
                ],
                thresholds=_thresholds((None, "orange")),
            )
        )
        .with_row(Row("Sweeps"))
        .with_panel(
            bars(
                "Sweep progress (running sweeps, else the latest, per label)",
                [("farm_sweep_progress_ratio", "{{label}}")],
                unit="percentunit",
                maximum=1,
                w=12,
            )
        )
        .with_panel(
            stat_panel(
                "Sweeps running",
                [("sum(farm_sweeps_running)", "running")],
                w=4,
                h=8,
            )
        )
        .with_panel(
            stat_panel(
                "Latest sweep submitted",
                [("max by (label) (farm_sweep_start_timestamp_seconds) * 1000", "{{label}}")],
                unit="dateTimeFromNow",
                w=8,
                h=8,
            )
        )
        .with_panel(
            ts(
                "Sweep runs done / planned",
                [
                    ("farm_sweep_runs_done", "{{label}} done"),
                    ("farm_sweep_runs", "{{label}} planned"),
                ],
                w=24,
            )
        )
        .with_row(Row("Nightly verdicts"))
        .with_panel(
            table_panel(
                "Latest judged sweep per label: metrics worse than its baseline",
                [
                    (
                        "farm_sweep_regressions * on (label) "
                        "group_left (sweep, baseline, state, report_url) farm_sweep_verdict_info",
                        "",
                    )
                ],
                hide=("Time", "__name__", "instance", "job"),
                rename={"Value": "worse", "state": "verdict"},
                description="farm submit --verdict: once a sweep has finished it is judged "
                "against its baseline (the last good sweep of its label). Click a row for "
                "its report; 'no baseline' is a label's first night.",
                w=24,
                h=6,
            )
            .data_links([report_link()])
            .sort_by([TableSortByFieldState().display_name("worse").desc(True)])
        )
        .with_panel(
            table_panel(
                "Latest verdicts per metric (worse first)",
                [
                    (
                        'farm_verdict{board=~"$board"} * on (label) group_left '
                        "(sweep, report_url) farm_sweep_verdict_info",
                        "",
                    ),
                    (
                        'farm_verdict_change_ratio{board=~"$board"} * on (label) group_left '
                        "(sweep, report_url) farm_sweep_verdict_info",
                        "",
                    ),
                ],
                merge=True,
                hide=("Time", "__name__", "instance", "job"),
                rename={"Value #A": "verdict", "Value #B": "change"},
                description="The latest judged sweep of each label against its baseline: "
                "worse, same or better beyond each metric's noise (farm compare's verdicts), "
                "and the change relative to the baseline. Click a row for the sweep's report.",
                w=24,
                h=10,
            )
            .data_links([report_link()])
            .override_by_name(
                "verdict",
                [
                    DynamicConfigValue("mappings", [VERDICT_WORDS]),
                    DynamicConfigValue("custom.cellOptions", {"type": "color-text"}),
                ],
            )
            .override_by_name("change", [DynamicConfigValue("unit", "percentunit")])
            .sort_by([TableSortByFieldState().display_name("verdict")])
        )
        .with_row(Row("Ingest"))
        .with_panel(
            ts(
                "Messages stored per second, by kind",
                [
                    (
                        "sum by (kind) (rate(farm_ingest_accepted_total[$__rate_interval]))",
                        "{{kind}}",
                    )
                ],
                unit="reqps",
                w=8,
            )
        )
        .with_panel(
            ts(
                "Messages rejected per second, by reason",
                [
                    (
                        "sum by (reason) (rate(farm_ingest_rejected_total[$__rate_interval]))",
                        "{{reason}}",
                    )
                ],
                unit="reqps",
                w=8,
            )
        )
        .with_panel(
            ts(
                "Samples per second",
                [
                    ("sum(rate(farm_ingest_samples_total[$__rate_interval]))", "stored"),
                    (
                        "sum(rate(farm_ingest_duplicate_samples_total[$__rate_interval]))",
                        "duplicates",
                    ),
                    (
                        "sum(rate(farm_ingest_conflicting_samples_total[$__rate_interval]))",
                        "conflicts",
                    ),
                ],
                w=8,
            )
        )
        .with_panel(
            ts(
                "Each ingest process: messages handled per second and queued",
                [
                    (
                        "rate(farm_ingest_process_messages_total[$__rate_interval])",
                        "{{instance}} handled/s",
                    ),
                    ("farm_ingest_process_queued_messages", "{{instance}} queued"),
                ],
                w=24,
            )
        )
    )


# -- benchmarks ----------------------------------------------------------------------------------

BB = 'benchmark=~"$benchmark", board=~"$board"'
SWW = 'benchmark="sww01"'
QUALITY = f"(farm_result_top1_accuracy_ratio{{{BB}}} or farm_result_auc_ratio{{{BB}}})"


def benchmarks() -> Dashboard:
    return (
        base(
            "tinyfarm-benchmarks",
            "tinyfarm / benchmarks",
            "The latest result of every board, side by side, per MLPerf Tiny benchmark.",
        )
        .with_variable(
            label_variable(
                "benchmark", "label_values(farm_result_valid, benchmark)", label="Benchmark"
            )
        )
        .with_variable(
            label_variable(
                "board",
                'label_values(farm_result_valid{benchmark=~"$benchmark"}, board)',
                label="Board",
            )
        )
        .with_row(Row("$benchmark").repeat("benchmark"))
        .with_panel(
            bars(
                "Latency (performance mode: 1 / median throughput)",
                [(f"farm_result_latency_seconds{{{BB}}}", "{{board}}")],
                unit="s",
                w=8,
            )
        )
        .with_panel(
            bars(
                "Median throughput",
                [(f"farm_result_throughput_inferences_per_second{{{BB}}}", "{{board}}")],
                unit="suffix: inf/s",
                w=8,
            )
        )
        .with_panel(
            bars(
                "Per-inference p90 (latency mode, supplemental)",
                [
                    (
                        f'farm_result_inference_latency_seconds{{{BB}, quantile="0.9"}}',
                        "{{board}} p90",
                    ),
                    (
                        f'farm_result_early_stopping_latency_seconds{{{BB}, quantile="0.9"}}',
                        "{{board}} early-stopping p90",
                    ),
                ],
                unit="s",
                w=8,
            )
        )
        .with_panel(
            bars(
                "Accuracy (top-1) or AUC",
                [(QUALITY, "{{board}}")],
                unit="percentunit",
                maximum=1,
                w=8,
            )
        )
        .with_panel(
            bars(
                "Margin over the closed-division target",
                [
                    (
                        f"{QUALITY} - on (board, benchmark, mode) "
                        f"farm_result_quality_target_ratio{{{BB}}}",
                        "{{board}}",
                    )
                ],
                unit="percentunit",
                minimum=None,
                thresholds=_thresholds((None, "red"), (0, "green")),
                description="Below zero the board misses the target (as the checker rounds, "
                "farm_result_quality_target_met decides).",
                w=8,
            )
        )
        .with_panel(
            bars(
                "Energy per inference (energy mode)",
                [(f"farm_result_energy_per_inference_joules{{{BB}}}", "{{board}}")],
                unit="joule",
                w=8,
            )
        )
        .with_panel(
            table_panel(
                "Latest results",
                [
                    (f"max by (board, benchmark) (farm_result_latency_seconds{{{BB}}})", ""),
                    (
                        "max by (board, benchmark) (farm_result_inference_latency_seconds"
                        f'{{{BB}, quantile="0.9"}})',
                        "",
                    ),
                    (f"max by (board, benchmark) {QUALITY}", ""),
                    (
                        f"max by (board, benchmark) (farm_result_quality_target_ratio{{{BB}}})",
                        "",
                    ),
                    (
                        "max by (board, benchmark) "
                        f"(farm_result_energy_per_inference_joules{{{BB}}})",
                        "",
                    ),
                    (f"min by (board, benchmark) (farm_result_valid{{{BB}}})", ""),
                ],
                merge=True,
                rename={
                    "Value #A": "latency (s)",
                    "Value #B": "p90 (s)",
                    "Value #C": "accuracy / AUC",
                    "Value #D": "target",
                    "Value #E": "energy (J)",
                    "Value #F": "all valid",
                },
                w=24,
            )
        )
        # sww01 is one energy stream with numbers of its own: a row of its own, not repeated.
        .with_row(Row("Streaming wakeword (sww01)"))
        .with_panel(
            bars(
                "Wakewords: detected, missed, false detections",
                [
                    (f"farm_result_true_positives{{{SWW}}}", "{{board}} true positives"),
                    (f"farm_result_false_negatives{{{SWW}}}", "{{board}} false negatives"),
                    (f"farm_result_false_positives{{{SWW}}}", "{{board}} false positives"),
                ],
                description="The latest stream of each board, as the checker reads it. The "
                "closed division allows at most 8 false negatives and 8 false positives, and the "
                "checker needs TP + FN = 50 (the official long file).",
                thresholds=_thresholds((None, "green"), (9, "red")),
                w=8,
            )
        )
        .with_panel(
            bars(
                "F1 and duty cycle",
                [
                    (f"farm_result_f1_ratio{{{SWW}}}", "{{board}} F1"),
                    (f"farm_result_duty_cycle_ratio{{{SWW}}}", "{{board}} duty cycle"),
                ],
                unit="percentunit",
                maximum=1,
                description="F1 = 2 TP / (2 TP + FP + FN); duty cycle: the DUT's processing "
                "time over the 32 ms frame period (its first 100 frames).",
                w=8,
            )
        )
        .with_panel(
            bars(
                "Estimated throughput and mean power",
                [
                    (
                        f"farm_result_throughput_inferences_per_second{{{SWW}}}",
                        "{{board}} inf/s",
                    ),
                    (f"farm_result_power_watts{{{SWW}}} * 1000", "{{board}} mW"),
                ],
                description="Throughput: 1 / mean processing time of a frame; power: the mean "
                "over the whole stream, sww01's energy metric (mW).",
                w=8,
            )
        )
    )


# -- board ---------------------------------------------------------------------------------------

B = 'board="$board"'
BBM = 'board="$board", benchmark=~"$benchmark"'
BUCKETS = f"farm_inference_latency_seconds_bucket{{{BBM}}}"


def board() -> Dashboard:
    return (
        base(
            "tinyfarm-board",
            "tinyfarm / board",
            "One board over time: status, the nightly history of its results, and the live "
            "per-inference latency.",
        )
        .with_variable(
            label_variable(
                "board", "label_values(farm_board_state, board)", label="Board", multi=False
            )
        )
        .with_variable(
            label_variable(
                "benchmark",
                f"label_values(farm_result_valid{{{B}}}, benchmark)",
                label="Benchmark",
            )
        )
        .with_row(Row("Status"))
        .with_panel(
            stat_panel(
                "State",
                [(f"farm_board_state{{{B}}} == 1", "{{state}}")],
                text=BigValueTextMode.NAME,
                w=4,
            )
        )
        .with_panel(
            stat_panel(
                "Health",
                [(f"farm_board_health{{{B}}} == 1", "{{state}}")],
                text=BigValueTextMode.NAME,
                w=4,
            )
        )
        .with_panel(
            stat_panel(
                "Its agent online",
                [
                    (
                        "farm_agent_up and on (agent) "
                        f"farm_board_last_seen_timestamp_seconds{{{B}}}",
                        "{{agent}}",
                    )
                ],
                thresholds=_thresholds((None, "red"), (1, "green")),
                w=4,
            )
        )
        .with_panel(
            table_panel(
                "Health reason and firmware",
                [
                    (f"farm_board_health_reason_info{{{B}}}", ""),
                    (f"farm_board_firmware_info{{{B}}}", ""),
                ],
                hide=("Time", "__name__", "Value #A", "Value #B", "instance", "job"),
                merge=True,
                rename={"state": "health"},
                w=12,
                h=4,
            )
        )
        .with_panel(
            stat_panel(
                "Held",
                [
                    (f"farm_board_reserved{{{B}}}", "reserved"),
                    (f"farm_board_quarantined{{{B}}}", "quarantined"),
                ],
                thresholds=_thresholds((None, "green"), (1, "orange")),
                w=4,
                h=6,
            )
        )
        .with_panel(reservations_table(B, w=10, h=6))
        .with_panel(quarantine_table(B, w=10, h=6))
        .with_row(Row("Nightly history"))
        .with_panel(
            ts(
                "Latency (performance mode)",
                [(f"farm_result_latency_seconds{{{BBM}}}", "{{benchmark}}")],
                unit="s",
                w=8,
            )
        )
        .with_panel(
            ts(
                "Median throughput",
                [(f"farm_result_throughput_inferences_per_second{{{BBM}}}", "{{benchmark}}")],
                unit="suffix: inf/s",
                w=8,
            )
        )
        .with_panel(
            ts(
                "Per-inference latency percentiles (latency mode, supplemental)",
                [
                    (
                        f"farm_result_inference_latency_seconds{{{BBM}}}",
                        "{{benchmark}} p{{quantile}}",
                    ),
                    (
                        f"farm_result_early_stopping_latency_seconds{{{BBM}}}",
                        "{{benchmark}} early-stopping p{{quantile}}",
                    ),
                ],
                unit="s",
                w=8,
            )
        )
        .with_panel(
            ts(
                "Accuracy (top-1) or AUC, and the target",
                [
                    (
                        f"farm_result_top1_accuracy_ratio{{{BBM}}} or "
                        f"farm_result_auc_ratio{{{BBM}}}",
                        "{{benchmark}}",
                    ),
                    (f"farm_result_quality_target_ratio{{{BBM}}}", "{{benchmark}} target"),
                ],
                unit="percentunit",
                w=8,
            )
        )
        .with_panel(
            ts(
                "Energy per inference (energy mode)",
                [(f"farm_result_energy_per_inference_joules{{{BBM}}}", "{{benchmark}}")],
                unit="joule",
                w=8,
            )
        )
        .with_panel(
            ts(
                "Valid for a submission (1) or not (0)",
                [(f"farm_result_valid{{{BBM}}}", "{{benchmark}} {{mode}}")],
                w=8,
                minimum=0,
            )
        )
        .with_row(Row("Live per-inference latency (from ingest)"))
        .with_panel(
            heatmap.Panel()
            .title("Per-inference latency (accuracy and latency samples)")
            .datasource(DS)
            .span(12)
            .height(9)
            .calculate(False)
            .y_axis(YAxisConfig().unit("s"))
            .with_target(
                query(
                    f"sum by (le) (increase({BUCKETS}[$__rate_interval]))",
                    "{{le}}",
                    fmt=PromQueryFormat.HEATMAP,
                )
            )
        )
        .with_panel(
            _targets(
                ts("Per-inference latency percentiles (live)", [], unit="s", w=12, h=9),
                [
                    (
                        f"histogram_quantile({q}, sum by (le, benchmark) "
                        f"(rate({BUCKETS}[$__rate_interval])))",
                        f"{{{{benchmark}}}} p{round(q * 100)}",
                    )
                    for q in (0.5, 0.9, 0.99)
                ],
            )
        )
        .with_panel(
            ts(
                "Inferences observed per second",
                [
                    (
                        "sum by (benchmark) (rate(farm_inference_latency_seconds_count"
                        f"{{{BBM}}}[$__rate_interval]))",
                        "{{benchmark}}",
                    )
                ],
                w=24,
                h=6,
            )
        )
    )


# -- output --------------------------------------------------------------------------------------

DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "fleet": fleet,
    "benchmarks": benchmarks,
    "board": board,
}


def _number_panels(model: dict[str, Any]) -> dict[str, Any]:
    """Give every panel (rows included) a stable id, in order."""
    next_id = 1
    for panel in model.get("panels", []):
        panel["id"] = next_id
        next_id += 1
        for inner in panel.get("panels", []):
            inner["id"] = next_id
            next_id += 1
    return model


def render(name: str) -> str:
    """The dashboard's JSON as committed (sorted keys, two-space indent, final newline)."""
    model = json.loads(json.dumps(DASHBOARDS[name]().build(), cls=JSONEncoder))
    return json.dumps(_number_panels(model), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the tinyfarm Grafana dashboards.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    stale = []
    for name in DASHBOARDS:
        path = args.out / f"{name}.json"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python -m dashboards.generate): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
