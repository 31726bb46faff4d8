"""The end of a sweep: marked finished exactly once and, when ``farm submit --verdict`` asked
for it, judged against its baseline by one short job (``controller.jobs.judge_sweep``).

:func:`close_sweep` is called by whatever ends a run (the run job, the reaper); two workers
may end a sweep's last runs at the same moment and both see every run ended, so the
transition is one Redis transaction whose ``HSETNX`` of ``finished_at`` only one caller
wins: that caller alone queues the judge job (on the high-priority queue: a short job, not
behind the next sweep's runs).

:func:`judge` compares the sweep with its baseline (:func:`controller.compare.compare`: the
last good sweep of its label unless the request names another label or more nights), writes
the report, and stores the verdicts (:mod:`controller.verdicts`). A label's first sweep has
nothing to compare with: its record says ``no baseline``, which is not an error. A report
that cannot be written leaves the verdicts stored with the reason, since the verdicts are
what the alert needs.

Where reports go and how they are linked: ``FARM_REPORT_DIR`` (default
``$FARM_RESULTS_DIR/reports``), each sweep's in ``<dir>/<sweep>/`` unless the request gives
another directory; ``FARM_REPORT_URL``, a template with ``{sweep}`` and ``{label}`` such as
``https://lab.example/reports/{sweep}/index.html`` for a web server that serves that
directory (default: the ``file://`` URL of the report's ``index.html``).
"""

from __future__ import annotations

import json
import os
import string
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import redis
from rq import Retry

from controller import keys
from controller.compare import Baseline, CompareError, Comparison, RedisHistory, compare, rows
from controller.queueing import queue
from controller.settings import Settings
from controller.store import rq_connection
from controller.sweeps import JOB_RETRIES, QUEUES
from controller.verdicts import (
    JUDGED,
    NO_BASELINE,
    QUEUED,
    VerdictRecord,
    VerdictRequest,
    VerdictRow,
    store,
)
from farm.logs import get_logger

log = get_logger("controller.judge")

#: RQ's backstop for one judgement: comparing a full-suite sweep and plotting its report
#: takes seconds to minutes.
JUDGE_TIMEOUT_S = 1800
#: The fields a ``FARM_REPORT_URL`` template may use.
URL_FIELDS = frozenset({"sweep", "label"})


class JudgeError(ValueError):
    """The sweep cannot be judged (it is gone): the message says why."""


#: Sets the sweep's ``finished_at`` (ARGV[1]) and its other fields (the rest of ARGV, name
#: value pairs) only if ``finished_at`` was not set: the first caller wins, and a later one
#: (the reaper closing the sweep again, say) cannot set ``verdict`` back to queued.
_FINISH_ONCE = """
if redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""


def close_sweep(client: redis.Redis, sweep_id: str) -> bool:
    """Mark the sweep finished if every one of its runs has ended, and queue its judge job if
    its spec asks for a verdict. True for the one caller that finished it."""
    run_ids = client.lrange(keys.sweep_runs(sweep_id), 0, -1)
    with client.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hget(keys.run(run_id), "state")
        pipe.hget(keys.sweep(sweep_id), "spec")
        *states, spec = pipe.execute()
    if not all(s in keys.TERMINAL for s in states):
        return False
    request = VerdictRequest.from_spec(json.loads(spec or "{}"))
    fields = ["state", "finished"]
    if request is not None:
        fields += ["verdict", QUEUED]
    if not client.eval(_FINISH_ONCE, 1, keys.sweep(sweep_id), time.time(), *fields):
        return False
    log.info("sweep_finished", sweep=sweep_id, runs=len(run_ids), verdict=request is not None)
    if request is not None:
        _enqueue_judge(client, sweep_id)
    return True


def _enqueue_judge(client: redis.Redis, sweep_id: str) -> None:
    # The job function; imported late (controller.jobs imports this module).
    from controller.jobs import judge_sweep

    queue(QUEUES["high"], rq_connection(client)).enqueue(
        judge_sweep,
        sweep_id,
        job_id=f"judge-{sweep_id}",
        job_timeout=JUDGE_TIMEOUT_S,
        # Judging again rewrites the same record: a job lost with its worker can run again.
        retry=Retry(max=JOB_RETRIES),
        result_ttl=7 * 86400,
        failure_ttl=7 * 86400,
        description=f"verdict of sweep {sweep_id}",
    )


def report_settings(
    settings: Settings, environ: Mapping[str, str] = os.environ
) -> tuple[Path, str]:
    """Where reports go (``FARM_REPORT_DIR``) and the URL template (``FARM_REPORT_URL``, ""
    for ``file://`` URLs); ``ValueError`` naming a template field other than ``{sweep}`` and
    ``{label}``."""
    root = Path(environ.get("FARM_REPORT_DIR") or settings.results / "reports")
    template = environ.get("FARM_REPORT_URL", "").strip()
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"FARM_REPORT_URL={template!r}: {exc}") from None
    unknown = fields - URL_FIELDS
    if unknown:
        raise ValueError(
            f"FARM_REPORT_URL={template!r}: unknown field(s) "
            f"{', '.join('{' + f + '}' for f in sorted(unknown))} (use {{sweep}} and {{label}})"
        )
    return root, template


def report_url(template: str, sweep_id: str, label: str, index: Path) -> str:
    """The link to a sweep's report: the template filled in (the label URL-quoted), or the
    ``file://`` URL of ``index``."""
    if not template:
        return index.absolute().as_uri()
    return template.format(sweep=sweep_id, label=urllib.parse.quote(label, safe=""))


def judge(
    client: redis.Redis,
    sweep_id: str,
    *,
    reports: Path,
    url_template: str = "",
    now: float | None = None,
    results: Path | None = None,
) -> VerdictRecord:
    """Compare the sweep with its baseline, write its report under ``reports`` (unless the
    request names another directory) and store the verdicts; the record stored. ``results``:
    the results directory, where sweeps trimmed from Redis keep their run folders."""
    raw = client.hmget(keys.sweep(sweep_id), ["spec", "label"])
    if raw[0] is None:
        raise JudgeError(f"no sweep {sweep_id!r} (trimmed or never submitted)")
    request = VerdictRequest.from_spec(json.loads(raw[0])) or VerdictRequest()
    label = raw[1] or ""
    judged_at = time.time() if now is None else now
    wanted = Baseline(label=request.against, last=request.last)
    baseline: Baseline | None = wanted
    try:
        comparison = compare(RedisHistory(client, results), sweep_id, wanted)
    except CompareError as exc:
        record = VerdictRecord(sweep_id, label, NO_BASELINE, judged_at, note=str(exc))
        baseline = None
    else:
        record = from_comparison(comparison, judged_at)
    out = Path(request.report_dir) if request.report_dir else reports
    record = _with_report(client, record, out / sweep_id, baseline, url_template, results)
    latest = store(client, record)
    log.info(
        "sweep_judged",
        sweep=sweep_id,
        label=label,
        state=record.state,
        baseline=list(record.baseline),
        regressions=record.regressions,
        metrics=len(record.rows),
        report=record.report_url or record.report_error,
        latest=latest,
    )
    return record


def from_comparison(comparison: Comparison, judged_at: float) -> VerdictRecord:
    """The record of a comparison's verdicts."""
    return VerdictRecord(
        comparison.sweep.id,
        comparison.sweep.label,
        JUDGED,
        judged_at,
        tuple(b.id for b in comparison.baseline),
        tuple(
            VerdictRow(
                r["board"],
                r["benchmark"],
                r["mode"],
                r["metric"],
                r["verdict"],
                r["change_pct"],
                r["what_changed"],
            )
            for r in rows(comparison)
        ),
    )


def _with_report(
    client: redis.Redis,
    record: VerdictRecord,
    out: Path,
    baseline: Baseline | None,
    url_template: str,
    results: Path | None = None,
) -> VerdictRecord:
    """The record with its report's path and URL, or with why there is none."""
    # Imported here: matplotlib stays out of the workers' preload (controller.jobs imports
    # this module), for the one judge job a night that draws.
    from controller.reports import write_report

    try:
        index = write_report(client, record.sweep, out, baseline, results=results)
    except Exception as exc:  # the verdicts are stored whatever the report does
        log.warning("report_failed", sweep=record.sweep, error=repr(exc))
        return replace(record, report_error=f"the report failed: {exc!r}")
    url = report_url(url_template, record.sweep, record.label, index)
    return replace(record, report=str(index), report_url=url)
