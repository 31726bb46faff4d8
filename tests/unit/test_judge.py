"""A sweep's end and its verdict against a real Redis (database 6, flushed per test): the sweep
is finished exactly once however many workers end its last runs together (or the reaper
fails the last one), and queues one judge job when ``farm submit --verdict`` asked for it;
the judge stores a label's first night as "no baseline" and a slower night as worse with its
cause; the report's settings. (tests/integration/test_nightly.py runs the whole loop with
simulated boards and RQ workers.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from controller import keys
from controller.judge import close_sweep, judge, report_settings, report_url
from controller.queueing import queue
from controller.reaper import reap
from controller.settings import Settings
from controller.store import rq_connection
from controller.sweeps import QUEUES
from controller.verdicts import VerdictRequest, latest, load
from tests.integration.compare_data import FakeRun, store_sweep

REDIS_URL = "redis://127.0.0.1:6379/6"
#: Workers ending a sweep's last runs at the same moment.
RACERS = 8


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


def ended_sweep(
    client: redis.Redis, sweep_id: str, request: VerdictRequest | None, states: list[str]
) -> None:
    """A sweep whose runs are in ``states``, as a run job leaves it before closing it."""
    spec = {"label": "nightly", "verdict": None if request is None else request.to_json()}
    client.hset(
        keys.sweep(sweep_id),
        mapping={"id": sweep_id, "label": "nightly", "spec": json.dumps(spec), "state": "running"},
    )
    for i, state in enumerate(states):
        run_id = f"{sweep_id}-r{i:03d}"
        client.rpush(keys.sweep_runs(sweep_id), run_id)
        client.hset(keys.run(run_id), mapping={"id": run_id, "sweep": sweep_id, "state": state})


def judge_jobs(client: redis.Redis) -> list[str]:
    return queue(QUEUES["high"], rq_connection(client)).get_job_ids()


def race(sweep_id: str) -> list[bool]:
    """:func:`close_sweep` called by :data:`RACERS` threads released at once, each with its
    own connection (as workers have); what each returned."""
    start = threading.Barrier(RACERS)
    won: list[bool] = []

    def end_last_run() -> None:
        own = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        start.wait()
        won.append(close_sweep(own, sweep_id))
        own.close()

    threads = [threading.Thread(target=end_last_run) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


def test_racing_workers_finish_a_sweep_once_and_queue_one_judge_job(
    client: redis.Redis,
) -> None:
    sweeps = [f"sw-race-{n}" for n in range(20)]
    for sweep_id in sweeps:
        ended_sweep(client, sweep_id, VerdictRequest(), ["completed", "failed", "completed"])
    for sweep_id in sweeps:
        assert sorted(race(sweep_id)) == [False] * (RACERS - 1) + [True], sweep_id
        sweep = client.hgetall(keys.sweep(sweep_id))
        assert sweep["state"] == "finished" and sweep["verdict"] == "queued"
        assert float(sweep["finished_at"]) > 0
    assert sorted(judge_jobs(client)) == sorted(f"judge-{s}" for s in sweeps)
    job = queue(QUEUES["high"], rq_connection(client)).fetch_job(f"judge-{sweeps[0]}")
    assert job is not None and job.func_name == "controller.jobs.judge_sweep"
    assert list(job.args) == [sweeps[0]]
    # Closed again after its judge job wrote the verdict (the reaper failing a run whose worker
    # only lost its lease): the verdict stays, and no second job is queued.
    client.hset(keys.sweep(sweeps[0]), "verdict", "no regression: 3 same")
    assert not close_sweep(client, sweeps[0])
    assert client.hget(keys.sweep(sweeps[0]), "verdict") == "no regression: 3 same"
    assert len(judge_jobs(client)) == len(sweeps)


def test_a_sweep_with_a_run_going_stays_open_and_one_without_a_request_is_not_judged(
    client: redis.Redis,
) -> None:
    ended_sweep(client, "sw-open", VerdictRequest(), ["completed", "running"])
    assert not close_sweep(client, "sw-open")
    assert client.hget(keys.sweep("sw-open"), "state") == "running"
    ended_sweep(client, "sw-plain", None, ["completed", "cancelled"])
    assert close_sweep(client, "sw-plain")
    assert not close_sweep(client, "sw-plain")  # already finished
    assert client.hget(keys.sweep("sw-plain"), "state") == "finished"
    assert client.hget(keys.sweep("sw-plain"), "verdict") is None
    assert judge_jobs(client) == []


def test_a_last_run_the_reaper_fails_ends_its_sweep(client: redis.Redis) -> None:
    """A run whose worker died (no lease, no RQ job left) is failed by the reaper: as the
    sweep's last run, its end queues the judge job as a run job's end would."""
    ended_sweep(client, "sw-lost", VerdictRequest(), ["completed", "running"])
    lost = "sw-lost-r001"
    client.hset(keys.run(lost), mapping={"board": "b-1", "dispatched_at": 0, "job": "run-gone"})
    client.sadd(keys.RUNS_ACTIVE, lost)
    assert reap(client, rq_connection(client)) == [lost]
    assert client.hget(keys.run(lost), "state") == "failed"
    assert client.hget(keys.sweep("sw-lost"), "state") == "finished"
    assert judge_jobs(client) == ["judge-sw-lost"]


def performance_night(throughput: float, firmware: str) -> list[FakeRun]:
    identity = {"image": "kws01-performance.bin", "sha256": firmware}
    return [
        FakeRun(
            "b-slow", "kws01", "performance", {"throughput_ips": throughput}, firmware=identity
        ),
        FakeRun("b-same", "kws01", "performance", {"throughput_ips": 250.0}, firmware=identity),
    ]


def test_the_first_night_has_no_baseline_and_a_slower_night_is_worse_with_its_cause(
    client: redis.Redis, tmp_path: Path
) -> None:
    results, reports = tmp_path / "results", tmp_path / "reports"
    store_sweep(client, results, "sw-1", "nightly", 1000.0, performance_night(250.0, "sha-a"))
    first = judge(client, "sw-1", reports=reports, now=2000.0)
    assert first.state == "no baseline" and first.rows == () and first.regressions == 0
    assert "no finished sweep labelled 'nightly' before sw-1" in first.note
    assert load(client, "sw-1") == first
    assert client.hget(keys.sweep("sw-1"), "verdict") == "no baseline"
    assert latest(client) == {"nightly": "sw-1"}

    # 3 % slower inference on b-slow, with a new firmware image on both boards.
    store_sweep(client, results, "sw-2", "nightly", 1001.0, performance_night(250 / 1.03, "sha-b"))
    second = judge(client, "sw-2", reports=reports, now=2001.0)
    assert second.state == "judged" and second.baseline == ("sw-1",)
    verdicts = {(r.board, r.metric): r for r in second.rows}
    assert set(verdicts) == {("b-slow", "throughput_ips"), ("b-same", "throughput_ips")}
    slow = verdicts[("b-slow", "throughput_ips")]
    assert slow.verdict == "worse"
    assert slow.change_pct == pytest.approx(-100 * 0.03 / 1.03)
    assert slow.cause == "firmware image sha-a -> sha-b"
    assert verdicts[("b-same", "throughput_ips")].verdict == "same"
    assert second.regressions == 1
    assert load(client, "sw-2") == second
    assert client.hget(keys.sweep("sw-2"), "verdict") == "REGRESSED: 1 worse, 1 same"
    assert latest(client) == {"nightly": "sw-2"}
    index = reports / "sw-2" / "index.html"
    assert second.report == str(index) and index.is_file() and second.report_error == ""
    assert second.report_url == index.absolute().as_uri()


def test_report_settings_and_links(tmp_path: Path) -> None:
    settings = Settings.resolve(results=tmp_path / "results")
    assert report_settings(settings, {}) == (tmp_path / "results" / "reports", "")
    template = "https://lab.example/reports/{sweep}/index.html?label={label}"
    assert report_settings(
        settings, {"FARM_REPORT_DIR": "/srv/r", "FARM_REPORT_URL": template}
    ) == (
        Path("/srv/r"),
        template,
    )
    index = tmp_path / "sw-1" / "index.html"
    assert report_url("", "sw-1", "nightly", index) == f"file://{index}"
    assert (
        report_url(template, "sw-1", "night ly/x", index)
        == "https://lab.example/reports/sw-1/index.html?label=night%20ly%2Fx"
    )
    for bad, message in (
        ("https://lab.example/{run}/{sweep}", r"unknown field\(s\) \{run\}"),
        ("https://lab.example/{sweep", "expected '}'"),
    ):
        with pytest.raises(ValueError, match=message):
            report_settings(settings, {"FARM_REPORT_URL": bad})


@pytest.mark.parametrize(
    "args",
    [["--against", "nightly"], ["--last", "3"], ["--report-dir", "/tmp/x"]],
)
def test_verdict_options_without_verdict_are_refused(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "farm.cli", "submit", "--benchmark", "kws", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FARM_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert done.returncode == 2, done
    assert "--against, --last and --report-dir go with --verdict" in done.stderr
