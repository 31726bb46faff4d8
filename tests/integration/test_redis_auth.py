"""Redis behind the deploy kit's ACL users (controller.redis_acl), plain and over TLS: the farm
works end to end as farm-controller, the exporter reads as farm-exporter and can write
nothing, a client without the password gets one clear line, and a worker refuses any job it
cannot read as JSON or that is not the project's, running nothing of it."""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import yaml
from rq import Queue
from rq.job import JobStatus

from controller import keys
from controller.queueing import fetch_job, queue
from tests.integration.controller_lab import ControllerLab, start_controller_lab
from tests.integration.farm_procs import Proc, farm_command, fetch, free_port, wait_until
from tests.integration.redis_server import RedisServer

BOARDS = "- {id: ic-1, model: ic01, quality: 0.7, latency: {median_s: 0.002, spread: 0}}\n"
COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"
QUICK = json.dumps({"min_window_s": 0.5, "calibration_s": 0.2})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    found = RedisServer(tmp_path / "redis")
    found.start()
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture(params=[False, True], ids=["redis", "rediss"])
async def acl_lab(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ControllerLab]:
    """A controller lab whose every process reaches a private Redis as farm-controller."""
    private = RedisServer(tmp_path / "redis", tls=request.param)
    private.start()
    lab = await start_controller_lab(tmp_path, private.url())
    lab.server = private  # type: ignore[attr-defined]
    try:
        yield lab
    finally:
        await lab.stop()
        private.stop()


async def test_the_farm_runs_a_sweep_and_the_exporter_reads_it_as_acl_users(
    acl_lab: ControllerLab,
) -> None:
    server: RedisServer = acl_lab.server  # type: ignore[attr-defined]
    await acl_lab.add_agent("pi-a", BOARDS, dataset_limit=4)
    await acl_lab.start_controller(workers=1)
    await acl_lab.boards_ready(["ic-1"])
    _, out, _ = await acl_lab.farm(
        "submit", "--benchmark", "ic", "--mode", "accuracy", "--options", QUICK, "--wait", "--json"
    )
    sweep = json.loads(out)["sweep"]
    _, out, _ = await acl_lab.farm("show", sweep, "--json")
    (run,) = json.loads(out)["runs"]
    assert run["state"] == "completed" and run["summary"]["top1"] == pytest.approx(75.0)
    _, out, _ = await acl_lab.farm("status", "--json")
    status = json.loads(out)
    assert list(status["boards"]) == ["ic-1"] and status["queues"]["farm"] == 0

    port = free_port()
    exporter = Proc(
        ["--log-level", "info", "controller", "exporter", "--port", str(port)],
        acl_lab.dir / "exporter.log",
        env={**acl_lab.env, "FARM_REDIS_URL": server.url("farm-exporter")},
    )
    await exporter.start()
    try:
        metrics = await wait_until(
            lambda: _scrape(f"http://127.0.0.1:{port}/metrics"), 60, "the exporter's /metrics"
        )
    finally:
        await exporter.stop()
    assert "farm_exporter_redis_up 1.0" in metrics
    assert re.search(r'farm_result_samples\{[^}]*board="ic-1"[^}]*\} 4\.0', metrics), metrics
    # Its log names the URL without the password.
    assert server.passwords["farm-exporter"] not in exporter.output()
    assert "farm-exporter:***@" in exporter.output()


def _scrape(url: str) -> str | None:
    try:
        text = fetch(url)
    except OSError:
        return None
    return text if "farm_result_samples{" in text else None


def test_the_exporter_user_reads_and_can_write_nothing(server: RedisServer) -> None:
    controller = redis.Redis.from_url(server.url())
    controller.hset(keys.run("r-1"), "state", "completed")
    exporter = redis.Redis.from_url(server.url("farm-exporter"), decode_responses=True)
    assert exporter.hgetall(keys.run("r-1")) == {"state": "completed"}
    rq_exporter = redis.Redis.from_url(server.url("farm-exporter"))
    writes = [
        lambda: exporter.set(keys.run("r-2"), "x"),
        lambda: exporter.rpush("rq:queue:farm", "job"),
        lambda: queue("farm", rq_exporter).enqueue("controller.jobs.execute_run", "r-1"),
        exporter.flushall,
        lambda: exporter.config_get("*"),
        lambda: exporter.config_set("appendonly", "no"),
    ]
    for write in writes:
        with pytest.raises(redis.exceptions.NoPermissionError):
            write()
    # Nor can the controller's user administer the server, or reach keys beyond the farm's.
    for admin in (controller.flushall, lambda: controller.config_get("*"), controller.shutdown):
        with pytest.raises(redis.exceptions.NoPermissionError):
            admin()
    with pytest.raises(redis.exceptions.NoPermissionError):
        controller.set("other-app:key", "x")
    assert controller.exists("rq:queue:farm") == 0  # nothing the exporter tried landed


@pytest.mark.parametrize(
    "user, password, message",
    [
        (None, None, "requires a user and password: put them in the URL"),
        ("farm-controller", "wrong-password", "refused user farm-controller: invalid"),
    ],
    ids=["no-credentials", "wrong-password"],
)
async def test_a_client_without_the_password_gets_one_clear_line(
    server: RedisServer, user: str | None, password: str | None, message: str
) -> None:
    url = server.url(user, password=password)
    for command in (["status"], ["submit", "--benchmark", "ic"]):
        code, out, errs = await farm_command(command, {"FARM_REDIS_URL": url}, 120)
        assert code == 2, errs
        assert message in errs and "Traceback" not in errs
        assert errs.count("\n") == 1  # one line
        assert "wrong-password" not in errs  # the URL's password is masked
        assert out == ""


async def test_a_user_lacking_a_permission_gets_one_clear_line(server: RedisServer) -> None:
    """The read-only user passes the PING at start; its first write is refused in one line."""
    redis.Redis.from_url(server.url()).hset(keys.run("r-1"), "state", "running")
    code, _out, errs = await farm_command(
        ["cancel", "r-1"], {"FARM_REDIS_URL": server.url("farm-exporter")}, 120
    )
    assert code == 2, errs
    assert "user farm-exporter is not allowed this: " in errs and "Traceback" not in errs
    assert "'hset' command" in errs


async def test_a_worker_refuses_pickled_garbage_and_foreign_jobs_and_goes_on(
    tmp_path: Path, server: RedisServer
) -> None:
    db = redis.Redis.from_url(server.url())
    marker = tmp_path / "owned"
    command = f"touch {marker}"
    # What an attacker (or an older version) could write with RQ's default serializer: pickle.
    pickled = Queue("farm", connection=db).enqueue("os.system", command)
    # (RQ compresses the payload; the pickle inside names os.system.)
    assert pickle.loads(zlib.decompress(db.hget(pickled.key, "data")))[0] == "os.system"
    foreign = queue("farm", db).enqueue("os.system", command)
    garbage = queue("farm", db).enqueue("controller.jobs.execute_run", "r-0")
    db.hset(garbage.key, "data", b"\x80\x05not json at all")
    # Then a real farm job: an unknown run is answered "unknown" without a board.
    real = queue("farm", db).enqueue("controller.jobs.execute_run", "r-unknown")
    code, _out, errs = await farm_command(
        ["--log-level", "info", "controller", "worker", "--burst", "--processes", "1"],
        {"FARM_REDIS_URL": server.url()},
        120,
    )
    assert code == 0, errs
    assert not marker.exists()
    for job, reason in (
        (pickled, "its payload is not a JSON job"),
        (foreign, "os.system is not a tinyfarm job function"),
        (garbage, "its payload is not a JSON job"),
    ):
        assert fetch_job(job.id, db).get_status() == JobStatus.FAILED
        result = fetch_job(job.id, db).latest_result()
        assert result is not None and reason in (result.exc_string or ""), job.id
    assert errs.count("event=job_refused") == 3
    assert db.hget(keys.WORKER_COUNTERS, "refused_jobs") == b"3"
    done = fetch_job(real.id, db)
    assert done.get_status() == JobStatus.FINISHED and done.return_value() == "unknown"


async def test_a_daemon_given_a_refused_password_says_so_in_one_line(server: RedisServer) -> None:
    """A daemon started with a wrong password says so in one line and exits non-zero, for its
    service manager to retry (systemd Restart=on-failure, compose restart: unless-stopped)."""
    for args in (["worker", "--processes", "1"], ["ingest"]):
        code, _out, errs = await farm_command(
            ["controller", *args],
            {"FARM_REDIS_URL": server.url(password="wrong-password"), "FARM_MQTT_URL": "x"},
            60,
        )
        assert code == 2 and "refused user farm-controller" in errs, errs
        assert "Traceback" not in errs and errs.count("\n") == 1


def test_the_compose_redis_starts_with_its_users_and_healthcheck(tmp_path: Path) -> None:
    """deploy/docker-compose.yml's redis command, run by this host's redis-server with the
    .env passwords substituted: the users work as the ACL module says, and the healthcheck
    passes only with the read-only user's password."""
    service = yaml.safe_load(COMPOSE.read_text())["services"]["redis"]
    env = {"FARM_REDIS_PASSWORD": "c" * 20, "FARM_REDIS_EXPORTER_PASSWORD": "e" * 20}

    def substitute(text: str) -> str:
        return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: env[m[1]], text)

    port = free_port()
    args = [substitute(a) for a in service["command"][1:]]
    args += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    process = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    try:
        url = f"redis://{{}}@127.0.0.1:{port}/0"
        controller = redis.Redis.from_url(url.format(f"farm-controller:{'c' * 20}"))
        exporter = redis.Redis.from_url(url.format(f"farm-exporter:{'e' * 20}"))
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                controller.ping()
                break
            time.sleep(0.05)
        controller.set("farm:x", "1")
        assert exporter.get("farm:x") == b"1"
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.set("farm:x", "2")
        with pytest.raises(redis.exceptions.NoPermissionError):
            controller.flushall()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        check = service["healthcheck"]["test"][1].replace("redis-cli", f"redis-cli -p {port}")
        healthy = subprocess.run(["sh", "-c", check], env={"REDISCLI_AUTH": "e" * 20})
        assert healthy.returncode == 0
        wrong = subprocess.run(["sh", "-c", check], env={"REDISCLI_AUTH": "c" * 20})
        assert wrong.returncode != 0
    finally:
        process.terminate()
        process.wait(10)
