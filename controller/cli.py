"""The controller's commands: ``farm controller worker|ingest|exporter`` (processes) and the
client commands ``farm submit``, ``farm status``, ``farm sweeps``, ``farm show``,
``farm compare``, ``farm report``, ``farm cancel`` and ``farm demo``; ``controller.broker_cli`` adds
``farm broker``.

Every command finds Redis, the broker and the results directory through ``--redis``,
``--broker``, ``--results`` or ``FARM_REDIS_URL``, ``FARM_MQTT_URL``, ``FARM_RESULTS_DIR``;
the commands that connect to the broker take its TLS files as ``--mqtt-ca``, ``--mqtt-cert``,
``--mqtt-key`` or ``FARM_MQTT_CA``, ``FARM_MQTT_CERT``, ``FARM_MQTT_KEY``.
What needs the controller extra is imported inside the commands, so ``farm --help`` stays light
and a Pi without the extra still lists them, each saying which extra it needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller.board_cli import board_app
from controller.broker_cli import broker_app
from controller.progress import follow
from farm.catalog import BENCHMARKS, known_benchmarks
from farm.cli_common import console, err, fail, needs_extra

if TYPE_CHECKING:
    from controller.settings import Settings
    from farm.scripts import TestScript

controller_app = typer.Typer(
    help="The lab server's processes: RQ workers, MQTT ingest and the metrics exporter.",
    no_args_is_help=True,
    add_completion=False,
)
RedisOpt = Annotated[str | None, typer.Option("--redis", help="Redis URL (FARM_REDIS_URL)")]
BrokerOpt = Annotated[str | None, typer.Option("--broker", help="MQTT URL (FARM_MQTT_URL)")]
ResultsOpt = Annotated[
    Path | None, typer.Option("--results", help="Results directory (FARM_RESULTS_DIR)")
]
MqttCaOpt = Annotated[
    Path | None,
    typer.Option(
        "--mqtt-ca", help="CA certificate of an mqtts:// broker (FARM_MQTT_CA; default: system's)"
    ),
]
MqttCertOpt = Annotated[
    Path | None,
    typer.Option("--mqtt-cert", help="Client certificate for the broker (FARM_MQTT_CERT)"),
]
MqttKeyOpt = Annotated[
    Path | None, typer.Option("--mqtt-key", help="The client certificate's key (FARM_MQTT_KEY)")
]
MetricsTokenOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="FARM_METRICS_TOKEN_FILE",
        help="File holding a bearer token /metrics requires (401 without it)",
    ),
]
MetricsCertOpt = Annotated[
    Path | None,
    typer.Option(envvar="FARM_METRICS_TLS_CERT", help="Serve /metrics over HTTPS: certificate"),
]
MetricsKeyOpt = Annotated[
    Path | None, typer.Option(envvar="FARM_METRICS_TLS_KEY", help="...and its key")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --format json")]
FormatOpt = Annotated[
    str, typer.Option("--format", help="table (fits the terminal), csv, json or markdown")
]
#: What ``farm compare`` and ``farm report`` judge a sweep against.
BaselineArg = Annotated[
    str | None,
    typer.Argument(help="A baseline sweep id (default: the last good sweep of its label)"),
]
AgainstOpt = Annotated[
    str | None,
    typer.Option(help="Baseline: the last --last good sweeps with this label, e.g. nightly"),
]
LastOpt = Annotated[
    int, typer.Option(min=1, max=100, help="Good sweeps the baseline is the median of")
]


def _format(fmt: str, json_flag: bool) -> str:
    from controller.render import check_format

    try:
        return check_format(fmt, json_flag)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _settings(
    redis: str | None,
    broker: str | None,
    results: Path | None,
    tls: tuple[Path | None, Path | None, Path | None] | None = None,
) -> Settings:
    """Where Redis, the broker and the results are; exits 2 without the controller extra.
    ``tls`` (the CA, certificate and key options) for a command that connects to the broker:
    its TLS files are checked now, and a file that cannot be used exits 2 naming it."""
    from controller.settings import Settings
    from farm.mqtt_tls import TlsError

    try:
        # Every command reaches Redis: its client stands for the whole extra.
        import controller.store  # noqa: F401
    except ImportError as exc:
        raise needs_extra("controller", exc) from None
    ca, cert, key = tls or (None, None, None)
    settings = Settings.resolve(redis, broker, results, mqtt_ca=ca, mqtt_cert=cert, mqtt_key=key)
    if tls is not None:
        try:
            settings.mqtt_tls_context()
        except TlsError as exc:
            raise fail(f"broker TLS: {exc}") from None
    return settings


def _redis(settings: Settings) -> Any:
    from controller.store import StoreError, connect

    try:
        return connect(settings.redis_url)
    except StoreError as exc:
        raise fail(str(exc)) from None


# -- processes ---------------------------------------------------------------------------------


@controller_app.command()
def worker(
    redis: RedisOpt = None,
    broker: BrokerOpt = None,
    results: ResultsOpt = None,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            "-n",
            min=1,
            max=1024,
            help="RQ workers to fork: dispatch and score jobs at once (running boards hold none)",
        ),
    ] = 1,
    burst: Annotated[bool, typer.Option(help="Exit when the queues are empty")] = False,
    name: Annotated[
        str | None, typer.Option(help="Worker names: NAME-0, NAME-1, ... (default: RQ's)")
    ] = None,
    preload_scoring: Annotated[
        bool,
        typer.Option(
            help="Import numpy and scikit-learn once, before forking (shared by every worker)"
        ),
    ] = True,
    mqtt_ca: MqttCaOpt = None,
    mqtt_cert: MqttCertOpt = None,
    mqtt_key: MqttKeyOpt = None,
) -> None:
    """RQ workers executing runs' dispatch and score jobs, forked from one process that runs
    the lease reaper and the follower of every running run."""
    settings = _settings(redis, broker, results, (mqtt_ca, mqtt_cert, mqtt_key))
    _redis(settings)  # one clear line if Redis is not there
    from controller.health_schedule import HealthPolicy
    from controller.judge import report_settings
    from controller.reservations import console_grace_s
    from controller.retention import run_retention_s, samples_retention_s
    from controller.sweeps import QUEUE_ORDER

    try:
        # Jobs and the reaper read them: a bad value is said now, not at every run.
        samples_retention_s()
        run_retention_s()
        report_settings(settings)
        HealthPolicy.from_env()
        console_grace_s()
    except ValueError as exc:
        raise fail(str(exc)) from None
    from controller.worker_pool import WorkerPool, preload

    # The forked workers' jobs read the locations from the environment.
    os.environ.update(settings.env)
    preload(scoring=preload_scoring)
    pool = WorkerPool(settings.redis_url, list(QUEUE_ORDER), processes, name=name, burst=burst)
    raise typer.Exit(pool.run())


@controller_app.command()
def ingest(
    redis: RedisOpt = None,
    broker: BrokerOpt = None,
    group: Annotated[str, typer.Option(help="Shared-subscription group")] = "farm-ingest",
    share: Annotated[
        bool,
        typer.Option(
            help="Share the samples, run events, heartbeats and acks with the other ingest "
            "processes of --group (statuses are always subscribed plainly); off: one plain "
            "persistent subscription"
        ),
    ] = False,
    client_id: Annotated[
        str | None, typer.Option(help="MQTT client id (persistent session)")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Serve this process's Prometheus metrics on this port (off)"
        ),
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option(help="Address the metrics port listens on")
    ] = "127.0.0.1",
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            max=1000,
            help="Messages handled at once (one run's, and one agent's, stay in order)",
        ),
    ] = 16,
    partition: Annotated[
        str | None,
        typer.Option(
            help="INDEX/COUNT: handle only this share of the runs, agents and statuses "
            "(each of COUNT processes, with its own --client-id, gets every message and "
            "acknowledges the others' unread; not with --share); off: everything"
        ),
    ] = None,
    mqtt_ca: MqttCaOpt = None,
    mqtt_cert: MqttCertOpt = None,
    mqtt_key: MqttKeyOpt = None,
    metrics_token_file: MetricsTokenOpt = None,
    metrics_tls_cert: MetricsCertOpt = None,
    metrics_tls_key: MetricsKeyOpt = None,
) -> None:
    """Store what the agents publish (samples, events, statuses) in Redis."""
    settings = _settings(redis, broker, None, (mqtt_ca, mqtt_cert, mqtt_key))
    _redis(settings)
    from controller.ingest import main
    from controller.metrics_http import MetricsAccess

    raise typer.Exit(
        asyncio.run(
            main(
                settings,
                group=group,
                share=share,
                client_id=client_id,
                metrics_port=metrics_port,
                metrics_addr=metrics_addr,
                metrics_access=MetricsAccess(metrics_token_file, metrics_tls_cert, metrics_tls_key),
                concurrency=concurrency,
                partition=partition,
            )
        )
    )


@controller_app.command()
def exporter(
    redis: RedisOpt = None,
    host: Annotated[
        str, typer.Option("--host", "--addr", help="Address to listen on (loopback)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port of /metrics")] = 9108,
    metrics_token_file: MetricsTokenOpt = None,
    metrics_tls_cert: MetricsCertOpt = None,
    metrics_tls_key: MetricsKeyOpt = None,
) -> None:
    """Serve the farm's state in Redis as Prometheus metrics (/metrics)."""
    settings = _settings(redis, None, None)
    from controller.exporter import main
    from controller.metrics_http import MetricsAccess

    access = MetricsAccess(metrics_token_file, metrics_tls_cert, metrics_tls_key)
    raise typer.Exit(main(settings, addr=host, port=port, access=access))


# -- client commands ---------------------------------------------------------------------------


def submit(
    benchmark: Annotated[
        str | None, typer.Option(help=f"Benchmarks, comma-separated: {known_benchmarks()}")
    ] = None,
    suite: Annotated[
        str | None,
        typer.Option(help=f"'full': every benchmark ({', '.join(BENCHMARKS)}) in every mode"),
    ] = None,
    boards: Annotated[str, typer.Option(help="'all' or board ids id1,id2")] = "all",
    tags: Annotated[list[str] | None, typer.Option("--tags", help="key=value (repeatable)")] = None,
    mode: Annotated[
        str, typer.Option(help="performance,accuracy,energy,latency")
    ] = "performance,accuracy",
    dataset: Annotated[str | None, typer.Option(help="Dataset set on the agents")] = None,
    label: Annotated[str, typer.Option(help="Free text, e.g. nightly")] = "",
    priority: Annotated[str, typer.Option(help="high, normal or low")] = "normal",
    limit: Annotated[int | None, typer.Option(min=1, help="Only N samples (not valid)")] = None,
    truth: Annotated[
        str | None,
        typer.Option(help="sww01: the truth file in the agents' <dataset>/sww01 (official: long)"),
    ] = None,
    options: Annotated[
        str | None,
        typer.Option(help="Advanced: run options as JSON (windows, min_window_s, min_queries...)"),
    ] = None,
    flash: Annotated[
        bool,
        typer.Option(
            help="Let agents flash each board with every benchmark's firmware (--no-flash: a "
            "board runs only the model it holds)"
        ),
    ] = True,
    script: Annotated[
        list[str] | None,
        typer.Option(
            "--script",
            help="[MODE=]FILE: a test script in the official runner's grammar for one mode "
            "(tests_<mode>.yaml names its mode); its benchmarks run it as written "
            "(repeatable, one per mode)",
        ),
    ] = None,
    shard: Annotated[
        bool,
        typer.Option(
            "--shard",
            help="Split each benchmark's accuracy run across the matching boards that will run "
            "the same firmware, merged into one run (its numbers and files are one board's)",
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option(help="Follow the sweep live; exit 1 if a run fails")
    ] = False,
    verdict: Annotated[
        bool,
        typer.Option(
            "--verdict",
            help="Once finished, judge it against its baseline as farm compare does, write "
            "its report and export the verdicts (farm_verdict)",
        ),
    ] = False,
    against: Annotated[
        str | None,
        typer.Option(help="With --verdict: the baseline's label (default: the sweep's own)"),
    ] = None,
    last: Annotated[
        int | None,
        typer.Option(
            min=1, max=100, help="With --verdict: the baseline is the median of N good sweeps"
        ),
    ] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help="With --verdict: the report goes to DIR/<sweep>/ on the workers' host "
            "(default: FARM_REPORT_DIR)"
        ),
    ] = None,
    redis: RedisOpt = None,
    broker: BrokerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Queue a sweep: every matching board × benchmark × mode; prints the sweep id."""
    if not verdict and (against is not None or last is not None or report_dir is not None):
        raise fail("--against, --last and --report-dir go with --verdict")
    settings = _settings(redis, broker, None)
    from controller.sweeps import (
        MODES,
        QUEUES,
        SweepError,
        SweepSpec,
        expand_benchmarks,
        skipped_groups,
    )
    from controller.sweeps import (
        submit as submit_sweep,
    )
    from controller.verdicts import VerdictRequest
    from farm.messages import RunOptions

    if suite not in (None, "full"):
        raise fail(f"--suite takes 'full', not {suite!r}")
    if benchmark is None and suite is None:
        raise fail("give --benchmark NAME[,NAME] or --suite full")
    modes = list(MODES) if suite == "full" else [m.strip() for m in mode.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise fail(f"unknown mode(s) {', '.join(bad)} (valid: {', '.join(MODES)})")
    if priority not in QUEUES:
        raise fail(f"--priority takes {', '.join(QUEUES)}, not {priority!r}")
    tag_map: dict[str, str] = {}
    for tag in tags or []:
        key, sep, value = tag.partition("=")
        if not sep:
            raise fail(f"--tags takes key=value, not {tag!r}")
        tag_map[key] = value
    try:
        benches = expand_benchmarks(
            [b.strip() for b in (benchmark or "").split(",") if b.strip()], suite == "full"
        )
        spec = SweepSpec(
            benchmarks=[b.id for b in benches],
            boards=None if boards == "all" else [b.strip() for b in boards.split(",") if b.strip()],
            tags=tag_map,
            modes=modes,  # type: ignore[arg-type]
            dataset=dataset,
            label=label,
            priority=priority,
            options=RunOptions.model_validate(
                {**json.loads(options or "{}"), "limit": limit}
                | ({} if truth is None else {"truth": truth})
            ),
            verdict=VerdictRequest(
                against, last or 1, None if report_dir is None else str(report_dir.absolute())
            )
            if verdict
            else None,
            flash=flash,
            scripts=tuple(_test_script(given) for given in script or []),
            shard=shard,
        )
        client = _redis(settings)
        sweep_id, run_ids, skipped = submit_sweep(client, spec)
    except (SweepError, ValueError) as exc:  # ValueError: --options that do not validate
        raise fail(str(exc)) from None
    sharded = _sharded(client, run_ids) if shard else {}
    if json_out:
        print(
            json.dumps(
                {
                    "sweep": sweep_id,
                    "runs": run_ids,
                    "skipped": [s.__dict__ for s in skipped],
                    "shards": sharded,
                }
            )
        )
    else:
        console.print(f"sweep {sweep_id}: {len(run_ids)} runs queued", highlight=False)
        for run_id, boards_of in sharded.items():
            console.print(
                f"run {run_id} split across {len(boards_of)} boards: {', '.join(boards_of)}",
                highlight=False,
            )
        for line in skipped_groups(skipped):
            err.print(f"[yellow]skipped[/] {line}", highlight=False)
        console.print(sweep_id, highlight=False)
    if wait:
        from controller.sweep_view import sweep_report

        code = follow(client, sweep_id, quiet=json_out)
        report = sweep_report(client, sweep_id)
        if report is not None and not json_out:
            _print_results(report, "table")
        raise typer.Exit(code)


def _sharded(client: Any, run_ids: list[str]) -> dict[str, list[str]]:
    """The sharded runs among ``run_ids``, each with its shards' boards."""
    from controller import keys

    with client.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hget(keys.run(run_id), "boards")
        found = pipe.execute()
    return {r: json.loads(b) for r, b in zip(run_ids, found, strict=True) if b}


def _test_script(given: str) -> TestScript:
    """``[MODE=]FILE`` of ``--script``, read and checked (raises ``SweepError``)."""
    from controller.sweeps import SweepError
    from farm.scripts import ScriptError, load_test_script

    mode, sep, path = given.partition("=")
    try:
        return load_test_script(Path(path) if sep else Path(given), mode if sep else None)
    except ScriptError as exc:
        raise SweepError(str(exc)) from None


def status(
    board: Annotated[
        str | None,
        typer.Option(help="One board in detail: its state, reservation, quarantine and history"),
    ] = None,
    redis: RedisOpt = None,
    fmt: FormatOpt = "table",
    json_out: JsonOpt = False,
) -> None:
    """Boards (agent, state, health, who holds it, firmware, current run, last operation,
    last seen) and queues."""
    fmt = _format(fmt, json_out)
    settings = _settings(redis, None, None)
    client = _redis(settings)
    from controller import keys
    from controller.board_view import holds, operation_text
    from controller.queueing import queue
    from controller.render import Column, Listing, emit
    from controller.store import all_boards, rq_connection
    from controller.sweeps import QUEUE_ORDER

    boards = all_boards(client)
    if board is not None:
        _board_status(client, board, boards, fmt)
        return
    agents = {a: client.hgetall(keys.agent(a)) for a in client.smembers(keys.AGENTS)}
    rq_conn = rq_connection(client)
    queues = {name: len(queue(name, rq_conn)) for name in QUEUE_ORDER}
    now = time.time()
    held = holds(client, list(boards), now)
    rows = []
    for board_id, s in boards.items():
        run = s.get("run")
        done = total = None
        if run:
            r = client.hgetall(keys.run(run))
            done, total = int(r.get("done") or 0), int(r["total"]) if r.get("total") else None
        rows.append(
            {
                "board": board_id,
                "agent": s.get("agent"),
                "agent_state": agents.get(s.get("agent"), {}).get("state"),
                "state": s.get("state"),
                "health": s.get("health"),
                "health_reason": s.get("health_reason"),
                "held": held[board_id]["held"],
                "firmware": f"{s.get('model')} {s.get('build')}" if s.get("model") else None,
                "run": run,
                "done": done,
                "total": total,
                "last_op": operation_text(held[board_id]["last_operation"], now),
                "last_seen_s": round(now - s["last_seen"], 1) if s.get("last_seen") else None,
            }
        )
        # The document keeps each board's reservation, quarantine and latest operation.
        s.update({k: v for k, v in held[board_id].items() if k != "held"})
    listing = Listing(
        "boards",
        [
            Column("board", "board"),
            Column("agent", "agent", rank=2),
            Column("agent_state", "agent state", rank=3),
            Column("state", "state"),
            Column("health", "health"),
            Column("health_reason", "health reason", rank=1),
            Column("held", "held by", rank=1),
            Column("firmware", "firmware", rank=2),
            Column("run", "run", rank=1),
            Column("done", "done", rank=1, justify="right"),
            Column("total", "of", rank=1, justify="right"),
            Column("last_op", "last operation", rank=2),
            Column("last_seen_s", "seen s ago", justify="right"),
        ],
        rows,
        notes=["queues: " + ", ".join(f"{k} {v}" for k, v in queues.items())],
    )
    queue_listing = Listing(
        "queues",
        [Column("queue", "queue"), Column("jobs", "jobs")],
        [{"queue": k, "jobs": v} for k, v in queues.items()],
    )
    document = {"boards": boards, "agents": agents, "queues": queues}
    listings = [listing] if fmt == "table" else [listing, queue_listing]
    emit(fmt, listings, _typed(document), console)


def _board_status(client: Any, board: str, boards: dict[str, Any], fmt: str) -> None:
    """``farm status --board BOARD``: exit 2 naming the known boards if it is unknown."""
    from controller.board_view import board_detail, detail_notes, history_listing
    from controller.render import emit
    from controller.sweeps import unknown_boards

    if board not in boards:
        raise fail(unknown_boards([board], list(boards)))
    now = time.time()
    document = board_detail(client, board, boards[board])
    listing = history_listing(board, document["history"], now)
    listing.notes = detail_notes(document, now)
    emit(fmt, [listing], document, console)


#: Redis hash fields that hold numbers (everything in a hash is a string).
NUMERIC_FIELDS = frozenset(
    {"created", "total", "last_seen", "protocol", "started", "runs", "attempts", "priority"}
)
#: Redis hash fields that hold JSON documents.
JSON_FIELDS = frozenset({"spec", "status", "heartbeat"})


def _typed(value: Any, key: str = "") -> Any:
    """JSON with real types for what Redis holds as strings: the numeric fields as numbers,
    JSON documents (a sweep's spec, an agent's status) as objects."""
    if isinstance(value, dict):
        return {k: _typed(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if not isinstance(value, str):
        return value
    text = value.strip()
    if key in JSON_FIELDS:
        try:
            return json.loads(text)
        except ValueError:
            return value
    if key in NUMERIC_FIELDS:
        try:
            number = float(text)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in text else number
    return value


def sweeps(redis: RedisOpt = None, fmt: FormatOpt = "table", json_out: JsonOpt = False) -> None:
    """Every sweep, newest first."""
    fmt = _format(fmt, json_out)
    client = _redis(_settings(redis, None, None))
    from controller import keys
    from controller.render import Column, Listing, emit

    found = []
    for sweep_id in client.zrevrange(keys.SWEEPS, 0, 99):
        sweep = _typed(client.hgetall(keys.sweep(sweep_id)))
        runs = client.lrange(keys.sweep_runs(sweep_id), 0, -1)
        states = [client.hget(keys.run(r), "state") for r in runs]
        found.append(
            {
                **sweep,
                "id": sweep_id,
                "label": str(sweep.get("label", "")),
                "runs": len(runs),
                "completed": states.count("completed"),
                "failed": states.count("failed"),
            }
        )
    listing = Listing(
        "sweeps",
        [
            Column("id", "sweep"),
            Column("label", "label", rank=1),
            Column(
                "created",
                "created",
                lambda v: time.strftime("%Y-%m-%d %H:%M", time.localtime(float(v or 0))),
                rank=2,
            ),
            Column("state", "state"),
            Column("runs", "runs", justify="right"),
            Column("completed", "completed", justify="right"),
            Column("failed", "failed", justify="right"),
            Column("verdict", "verdict", rank=1),
        ],
        found,
    )
    emit(fmt, [listing], found, console)


def show(
    sweep_id: Annotated[str, typer.Argument(help="The sweep id")],
    redis: RedisOpt = None,
    fmt: FormatOpt = "table",
    json_out: JsonOpt = False,
) -> None:
    """The sweep's results, shaped like the MLPerf Tiny results table, with the supplemental
    latency percentiles and why a result is not valid (csv: one line per run)."""
    fmt = _format(fmt, json_out)
    client = _redis(_settings(redis, None, None))
    from controller.sweep_view import sweep_report

    report = sweep_report(client, sweep_id)
    if report is None:
        raise fail(f"no sweep {sweep_id!r} (see farm sweeps)")
    _print_results(report, fmt)


def _print_results(report: dict[str, Any], fmt: str) -> None:
    from controller.render import emit
    from controller.sweep_view import results_listings, run_listing

    listings = [run_listing(report)] if fmt == "csv" else results_listings(report)
    emit(fmt, listings, report, console)


def _one_baseline(baseline: str | None, against: str | None) -> None:
    """Exit 2 when both a baseline sweep and ``--against`` are given."""
    if baseline is not None and against is not None:
        raise fail("give a baseline sweep or --against LABEL, not both")


def compare(
    sweep_id: Annotated[str, typer.Argument(help="The sweep to judge")],
    baseline: BaselineArg = None,
    against: AgainstOpt = None,
    last: LastOpt = 1,
    history: Annotated[
        int,
        typer.Option(min=1, max=1000, help="Earlier good sweeps the run-to-run spread is from"),
    ] = 20,
    redis: RedisOpt = None,
    fmt: FormatOpt = "table",
    json_out: JsonOpt = False,
) -> None:
    """Verdicts per board × benchmark × mode and metric (better, same or worse, the change
    and its uncertainty, what changed between the runs) against a baseline; exits 1 when
    anything regressed."""
    fmt = _format(fmt, json_out)
    _one_baseline(baseline, against)
    settings = _settings(redis, None, None)
    client = _redis(settings)
    from controller.compare import (
        Baseline,
        CompareError,
        RedisHistory,
        document,
        listing,
    )
    from controller.compare import (
        compare as compare_sweeps,
    )
    from controller.render import emit

    try:
        result = compare_sweeps(
            RedisHistory(client, settings.results),
            sweep_id,
            Baseline(sweep=baseline, label=against, last=last),
            history=history,
        )
    except CompareError as exc:
        raise fail(str(exc)) from None
    emit(fmt, [listing(result)], document(result), console)
    raise typer.Exit(1 if result.regressed else 0)


def report(
    sweep_id: Annotated[str, typer.Argument(help="The sweep to report on")],
    out: Annotated[
        Path, typer.Option(help="Folder to write index.html, report.md and the CSV files into")
    ],
    baseline: BaselineArg = None,
    against: AgainstOpt = None,
    last: LastOpt = 1,
    history: Annotated[
        int,
        typer.Option(
            min=1, max=1000, help="Earlier good sweeps for the noise and the history plots"
        ),
    ] = 20,
    redis: RedisOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table: the page's path; json: what was written")
    ] = "table",
    json_out: JsonOpt = False,
) -> None:
    """A sweep's report for people (docs/reports.md): a self-contained index.html with the
    results table, the verdicts against a baseline and plots (latency, per-board bars,
    energy traces, history), and the same tables as report.md and CSV files. Prints the
    page's path; exits 0 whatever the verdicts (farm compare fails on a regression)."""
    fmt = _format(fmt, json_out)
    if fmt not in ("table", "json"):
        raise fail(f"--format takes table or json for farm report, not {fmt!r}")
    _one_baseline(baseline, against)
    settings = _settings(redis, None, None)
    client = _redis(settings)
    try:
        from controller.compare import Baseline
        from controller.reports import FILES, ReportError, write_report
    except ImportError as exc:  # matplotlib, the report's part of the controller extra
        raise needs_extra("controller", exc) from None

    started = time.perf_counter()
    try:
        index = write_report(
            client,
            sweep_id,
            out,
            Baseline(sweep=baseline, label=against, last=last),
            history=history,
            results=settings.results,
        )
    except ReportError as exc:
        raise fail(str(exc)) from None
    if fmt == "json":
        print(
            json.dumps(
                {
                    "index": str(index),
                    "files": sorted(f for f in FILES if (index.parent / f).is_file()),
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
        )
    else:
        print(index)


def cancel(
    target: Annotated[str, typer.Argument(help="A sweep id or a run id")],
    redis: RedisOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Cancel a sweep's unfinished runs, or one run."""
    client = _redis(_settings(redis, None, None))
    from controller.sweep_view import cancel as cancel_runs

    cancelled = cancel_runs(client, target)
    if cancelled is None:
        raise fail(f"no sweep or run {target!r}")
    if json_out:
        print(json.dumps({"cancelled": cancelled}))
    else:
        console.print(f"cancel requested for {len(cancelled)} run(s)", highlight=False)


def demo(
    boards: Annotated[int, typer.Option(min=1, max=64, help="Simulated boards")] = 8,
    quick: Annotated[
        bool, typer.Option(help="Small dataset subsets and short windows (about a minute)")
    ] = False,
    keep: Annotated[
        bool, typer.Option(help="Leave everything running; print how to point Grafana at it")
    ] = False,
    embedded: Annotated[
        bool | None,
        typer.Option(
            "--embedded/--no-embedded",
            envvar="FARM_DEMO_EMBEDDED",
            help="Force or forbid the embedded Redis and MQTT broker (default: only when "
            "nothing answers at the configured URLs)",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Working directory (default: a temp dir)")
    ] = None,
    stop: Annotated[
        Path | None,
        typer.Option(help="Stop the demo left running (--keep) in this working directory"),
    ] = None,
    redis: RedisOpt = None,
    broker: BrokerOpt = None,
    results: ResultsOpt = None,
    fmt: FormatOpt = "table",
    json_out: JsonOpt = False,
) -> None:
    """The whole farm on this machine: simulated boards, an agent, ingest and workers; a
    sweep of five benchmarks on stratified dataset subsets; progress; the results in the
    shape of the MLPerf Tiny results page; a clean shutdown. ``--quick`` takes about a
    minute, without it the official windows and query counts take under ten."""
    fmt = _format(fmt, json_out)
    json_out = fmt == "json"
    settings = _settings(redis, broker, results)
    from controller.demo import DemoError, DemoFarm, stop_left_running
    from controller.sweep_view import sweep_report

    if stop is not None:
        try:
            stopped = stop_left_running(stop)
        except DemoError as exc:
            raise fail(str(exc)) from None
        err.print(f"stopped {len(stopped)} processes of the demo in {stop}", highlight=False)
        return
    # SIGTERM (a service manager, `timeout`) stops the demo as Ctrl-C does: in order.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = out or Path(tempfile.mkdtemp(prefix="tinyfarm-demo-"))
    if results is None and not os.environ.get("FARM_RESULTS_DIR"):
        settings = dataclasses.replace(settings, results=work / "results")
    farm = DemoFarm(settings, boards=boards, quick=quick, embedded=embedded, out=work)
    try:
        farm.__enter__()  # on a failure it stops what it started before raising
        try:
            for note in farm.notes:
                err.print(note, highlight=False, soft_wrap=True)
            sweep_id, _ = farm.submit()
            code = follow(farm.redis, sweep_id, quiet=json_out, samples=farm.accuracy_samples())
            report = sweep_report(farm.redis, sweep_id)
            assert report is not None
            _print_results(report, fmt)
            where = [f"artifacts: {farm.settings.results / sweep_id}", f"logs: {farm.dir}"]
            if farm.metrics_url:
                where.append(f"metrics: {farm.metrics_url}")
            err.print("; ".join(where), highlight=False, soft_wrap=True)
            err.print(
                ("next: " if keep else "next: rerun with --keep and ")
                + "open the Grafana dashboards (deploy/grafana); "
                f"`farm show {sweep_id} --format csv` for every run's numbers; the artifacts "
                "hold each run's results.txt and log.txt",
                highlight=False,
                soft_wrap=True,
            )
            if keep:
                farm.record_pids()
                err.print(
                    f"left running (--keep): FARM_REDIS_URL={farm.settings.redis_url} "
                    f"FARM_MQTT_URL={farm.settings.broker_url}; scrape "
                    f"{farm.metrics_url or 'the exporter'} with Prometheus and add it to "
                    f"Grafana (deploy/grafana has the provisioning); stop with: "
                    f"farm demo --stop {farm.dir}",
                    highlight=False,
                    soft_wrap=True,
                )
        finally:
            if not keep:
                farm.stop()
    except DemoError as exc:
        raise fail(str(exc), 1) from None
    except KeyboardInterrupt:
        err.print("interrupted: everything the demo started is stopped", highlight=False)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


export_app = typer.Typer(
    help="Write what the farm measured in the shape another tool reads.",
    no_args_is_help=True,
    add_completion=False,
)


def export_submission(
    submitter: Annotated[str, typer.Option(help="The submitting organisation")],
    division: Annotated[str, typer.Option(help="closed or open")],
    out: Annotated[Path, typer.Option(help="Where to write <division>/<submitter>/")],
    sweeps: Annotated[
        list[str] | None,
        typer.Argument(help="Sweeps to take runs from (default: every sweep)"),
    ] = None,
    version: Annotated[str, typer.Option(help="The checker's rules: v1.3 or v1.4")] = "v1.4",
    redis: RedisOpt = None,
    fmt: FormatOpt = "table",
    json_out: JsonOpt = False,
) -> None:
    """The MLPerf Tiny submission tree of the best valid run per board, benchmark and mode
    (docs/operations.md#submission): systems JSON, results folders with the files the official
    checker expects; every refused run on stderr with its reason; the results table. Exit 1
    when nothing could be exported."""
    fmt = _format(fmt, json_out)
    client = _redis(_settings(redis, None, None))
    from controller.render import emit
    from controller.submission import SubmissionError, results_listing
    from controller.submission import export_submission as export

    try:
        done = export(client, out, submitter, division, sweeps or [], version)
    except SubmissionError as exc:
        raise fail(str(exc)) from None
    for refusal in done.refused:
        err.print(refusal.line(), highlight=False, soft_wrap=True)
    if done.root is None:
        raise fail(
            "nothing to export: no board has an acceptable accuracy and performance "
            "run of any benchmark",
            1,
        )
    emit(fmt, [results_listing(done)], done.to_json(), console)
    err.print(
        f"wrote {done.root}: {len({b for b, _, _ in done.chosen})} system(s), "
        f"{len(done.chosen)} result folder(s), {len(done.refused)} refusal(s)",
        highlight=False,
        soft_wrap=True,
    )


def _redis_errors(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with a Redis refusal or outage met mid-way (a user without a permission it
    needs, a server gone) reported in one line naming the URL, exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except Exception as exc:
            # Only a command that got as far as Redis can fail with its error; on a host
            # without the controller extra, redis cannot even be imported here.
            redis = sys.modules.get("redis")
            if redis is None or not isinstance(exc, redis.RedisError):
                raise
            from controller.settings import Settings
            from controller.store import explain

            url = Settings.resolve(kwargs.get("redis")).redis_url
            raise fail(explain(url, exc)) from None

    return wrapper


@controller_app.command("redis-acl")
def redis_acl(
    out: Annotated[
        Path, typer.Option("--out", help="The ACL file to write (redis.conf's aclfile)")
    ],
) -> None:
    """Write Redis's ACL file: default user off, farm-controller (read/write) and farm-exporter
    (read-only) with the passwords in FARM_REDIS_PASSWORD and FARM_REDIS_EXPORTER_PASSWORD."""
    from controller.redis_acl import AclError, acl_file, passwords_from_env

    try:
        text = acl_file(passwords_from_env())
    except AclError as exc:
        raise fail(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".new")
    # Private from its creation (it holds the password hashes); the rename swaps it in whole.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    partial.replace(out)
    console.print(f"wrote {out}: users default (off), farm-controller, farm-exporter")


def register(app: typer.Typer) -> None:
    """Add the controller's commands to the ``farm`` command line (the ``tinyfarm.cli`` entry
    point ``controller``)."""
    for command in (submit, status, sweeps, show, compare, report, cancel, demo):
        app.command()(_redis_errors(command))
    app.add_typer(controller_app, name="controller")
    export_app.command("submission")(_redis_errors(export_submission))
    app.add_typer(export_app, name="export")
    app.add_typer(broker_app, name="broker")
    app.add_typer(board_app, name="board")
