"""The farm's metrics in a real Prometheus: a simulated sweep (Mosquitto, Redis, `farm sim`
boards and their agent, ingest, RQ workers, `farm submit`), `farm controller exporter` and
the ingest process's metrics port scraped by a Prometheus (Debian package) started on a free
port with a generated config and the shipped alert rules; then every PromQL expression of the
dashboards must parse and return data, every alert expression must parse, and the
below-target board must fire FarmQualityBelowTarget. A second night is judged
against the first (``farm submit --verdict``), so the verdict panels have data and
FarmNightlyRegression stays quiet. A reserved board, a scheduled health check and a
quarantined board fill the operators' panels, and FarmBoardQuarantined comes with its reason.
The shipped Prometheus files pass promtool."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller import keys, quarantine
from controller.health_schedule import HealthPolicy, schedule
from controller.store import rq_connection
from tests.integration.compare_data import FakeRun, store_sweep
from tests.integration.controller_lab import ControllerLab
from tests.integration.farm_procs import Mosquitto, Proc, fetch, free_port, wait_until
from tests.tls_certs import Pki

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "tinyfarm.rules.yml"
#: This suite's Redis database (flushed by each lab); the controller suite uses 13.
#: ``FARM_TEST_OBSERVABILITY_REDIS`` picks another (two checkouts tested on one host at once).
REDIS_URL = os.environ.get("FARM_TEST_OBSERVABILITY_REDIS", "redis://127.0.0.1:6379/12")
#: Short runs: one window of 0.5 s, 100 latency queries (enough for early stopping), one energy
#: window.
QUICK = json.dumps(
    {
        "min_window_s": 0.5,
        "calibration_s": 0.2,
        "min_queries": 100,
        "min_duration_s": 0,
        "windows": 1,
    }
)
#: kws01 boards: one below the 90 % target (8 of 10 files right), one wired for energy.
BOARDS = """\
- {id: kws-low, model: kws01, quality: 0.8, latency: {median_s: 0.002, spread: 0}}
- {id: kws-high, model: kws01, quality: 1.0, energy: true, latency: {median_s: 0.003, spread: 0}}
"""
#: What Grafana puts for its variables: a multi-value variable (``=~"$board"``) at its
#: default, All (``.*``); the board dashboard's one board (``board="$board"``): the energy
#: board, which ran every mode.
ALL = ".*"
SINGLE = {"board": "kws-high"}
INTERVALS = {"__rate_interval": "5m", "__interval": "15s", "__range": "1h"}

# CI must run these (.ci/run installs the package); elsewhere they are skipped without it.
pytestmark = pytest.mark.skipif(
    (shutil.which("prometheus") is None or shutil.which("promtool") is None)
    and not os.environ.get("CI"),
    reason="needs the Debian prometheus package (apt-get install prometheus)",
)


def promtool(*args: str) -> str:
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_shipped_prometheus_files_pass_promtool() -> None:
    for config in ("prometheus.yml", "prometheus.host.yml"):
        assert "SUCCESS" in promtool("check", "config", str(PROMETHEUS_DIR / config))
    assert "SUCCESS: 14 rules found" in promtool("check", "rules", str(RULES))
    # Each alert fires on a scenario built for it (and not on its healthy twin).
    assert "SUCCESS" in promtool("test", "rules", str(RULES.with_name("tinyfarm.rules.test.yml")))


# -- a real Prometheus ---------------------------------------------------------------------------


class Prometheus:
    """A Prometheus of the test's own: free port, its config and data in tmp, scraping and
    evaluating rules every second."""

    def __init__(
        self, directory: Path, targets: dict[str, int], scrape: dict[str, Any] | None = None
    ) -> None:
        """``scrape``: more settings for every job (scheme, tls_config, authorization)."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                    **(scrape or {}),
                }
                for job, port in targets.items()
            ],
        }
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = self.dir / "prometheus.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        promtool("check", "config", str(self.config))
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                "prometheus",
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdout=out,
                stderr=out,
            )
        await wait_until(self._ready, 30, f"prometheus ready ({self.log})")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; the parsed answer (an HTTP error's JSON body too)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            return json.load(error)

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)


def substitute(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would."""
    expr = re.sub(r'=~"\$\{?\w+\}?"', f'=~"{ALL}"', expr)
    expr = re.sub(r'="\$\{?(\w+)\}?"', lambda m: f'="{SINGLE[m.group(1)]}"', expr)
    return re.sub(r"\$\{?(__\w+)\}?", lambda m: INTERVALS[m.group(1)], expr)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel or variable, expression) for every PromQL query of the dashboards."""
    found = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        model = json.loads(path.read_text())
        for panel in model["panels"]:
            for target in panel.get("targets", []):
                found.append((path.stem, panel["title"], target["expr"]))
        for variable in model["templating"]["list"]:
            if variable["type"] == "query":
                found.append((path.stem, f"${variable['name']}", variable["query"]))
    return found


def label_values(prometheus: Prometheus, query: str) -> list[str]:
    """A Grafana ``label_values(selector, label)`` variable query through the labels API."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, query
    answer = prometheus.api(f"label/{match.group(2)}/values", **{"match[]": match.group(1)})
    assert answer["status"] == "success", (query, answer)
    return answer["data"]


# -- the farm ------------------------------------------------------------------------------------


class ObservabilityLab(ControllerLab):
    """The controller lab on this suite's Redis database, with the ingest process's metrics
    port and the exporter."""

    exporter: Proc | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "FARM_REDIS_URL": REDIS_URL}

    async def start_observed_controller(
        self, workers: int, ingest_port: int, exporter_port: int
    ) -> None:
        self.ingest = Proc(
            ["--log-level", "info", "controller", "ingest", "--metrics-port", str(ingest_port)],
            self.dir / "ingest.log",
            env=self.env,
        )
        await self.ingest.start()
        self.exporter = Proc(
            ["--log-level", "info", "controller", "exporter", "--port", str(exporter_port)],
            self.dir / "exporter.log",
            env=self.env,
        )
        await self.exporter.start()
        await self.add_workers(workers)

    async def stop(self) -> None:
        """Stop everything, newest first; a process that does not stop within its grace
        (an RQ worker finishes its job first) is killed with its children."""
        procs = [*self.workers, self.exporter, self.ingest, *self.agents.values()]
        for proc in [*procs, *self.sims.values()]:
            if proc is None or proc.process is None:
                continue
            try:
                await proc.stop()
            except TimeoutError:
                await proc.kill_tree()
        await self.broker.stop()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[ObservabilityLab]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    broker = Mosquitto(tmp_path / "mqtt")
    await broker.start()
    farm = ObservabilityLab(tmp_path, broker, client)
    try:
        yield farm
    finally:
        await farm.stop()
        client.flushdb()


async def test_dashboards_and_alerts_work_on_a_simulated_sweep(
    lab: ObservabilityLab, tmp_path: Path
) -> None:
    ingest_port, exporter_port = free_port(), free_port()
    await lab.add_agent("pi-a", BOARDS)
    await lab.start_observed_controller(2, ingest_port, exporter_port)
    prometheus = Prometheus(
        tmp_path / "prometheus", {"farm-exporter": exporter_port, "farm-ingest": ingest_port}
    )
    try:
        await prometheus.start()
        await lab.boards_ready(["kws-low", "kws-high"])

        # A sweep in every mode (kws-low has no energy monitor: skipped), and one run that
        # fails (no such dataset on the agent: it rejects the run).
        _, out, _ = await lab.farm(
            "submit", "--benchmark", "kws", "--mode", "performance,accuracy,latency,energy",
            "--options", QUICK, "--label", "nightly", "--wait", "--json",
        )  # fmt: skip
        sweep = json.loads(out)
        assert len(sweep["runs"]) == 7 and len(sweep["skipped"]) == 1, sweep
        # The next night, judged against it (farm submit --verdict): one board's latency, the
        # same as before; the other runs are missing from it, which is no regression.
        _, out, _ = await lab.farm(
            "submit", "--benchmark", "kws", "--boards", "kws-high", "--mode", "latency",
            "--options", QUICK, "--label", "nightly", "--verdict", "--wait", "--json",
        )  # fmt: skip
        judged = json.loads(out)["sweep"]
        await wait_until(
            lambda: lab.redis.hget(f"farm:sweep:{judged}", "verdict") not in (None, "queued"),
            60,
            "the second night's verdict",
        )
        # kws-high's other modes and kws-low's runs are missing tonight: metrics without a
        # verdict, no regression.
        assert lab.redis.hget(f"farm:sweep:{judged}", "verdict") == (
            "no regression: 2 same, 7 missing"
        )
        code, _, _ = await lab.farm(
            "submit", "--benchmark", "kws", "--boards", "kws-low", "--mode", "performance",
            "--dataset", "nope", "--label", "canary", "--wait", "--json", check=False,
        )  # fmt: skip
        assert code == 1
        # An sww01 stream's result (one energy run: TP, FN, FP, F1, duty cycle, throughput,
        # power), stored as the controller stores a completed run: a real stream on a
        # simulated board plays its wav in real time, tested in test_sww_controller.py; here
        # the sww01 row's panels need a result to show.
        stream = {
            "throughput_ips": 62.5,
            "true_positives": 48,
            "false_negatives": 2,
            "false_positives": 3,
            "f1": 96 / 101,
            "duty_cycle": 0.5,
            "power_mw": 1.2,
        }
        store_sweep(
            lab.redis,
            tmp_path / "stored",
            "sw-stream",
            "sww",
            time.time(),
            [FakeRun("sww-1", "sww01", "energy", stream)],
        )

        # Both processes answer with parseable metrics; the histogram saw the inferences.
        exported = fetch(f"http://127.0.0.1:{exporter_port}/metrics")
        values = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exported)
            for s in family.samples
        }
        low = (("benchmark", "kws01"), ("board", "kws-low"), ("mode", "accuracy"))
        assert values[("farm_result_top1_accuracy_ratio", low)] == pytest.approx(0.8)
        assert values[("farm_result_quality_target_met", low)] == 0
        high = (("benchmark", "kws01"), ("board", "kws-high"), ("mode", "energy"))
        assert values[("farm_result_energy_per_inference_joules", high)] > 0
        assert values[("farm_run_failures_total", (("board", "kws-low"), ("reason",
                       "agent_rejected")))] == 1  # fmt: skip
        ingest_text = fetch(f"http://127.0.0.1:{ingest_port}/metrics")
        counts = {
            tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(ingest_text)
            for s in family.samples
            if s.name == "farm_inference_latency_seconds_count"
        }
        # kws-low: 10 accuracy samples and 100 latency queries, one inference each, each
        # observed once (a retried timed run stores its samples anew: observed again).
        retried = any(
            int(lab.redis.hget(f"farm:run:{run_id}", "attempts") or 0) > 1
            for run_id in sweep["runs"]
        )
        observed = counts[(("benchmark", "kws01"), ("board", "kws-low"))]
        assert observed == 110 or (retried and observed > 110), observed

        # Prometheus has scraped the results and evaluated the rules: the board below its
        # target fires at once (the rule has no `for`).
        def firing() -> list[dict[str, Any]]:
            alerts = prometheus.api("alerts")["data"]["alerts"]
            return [
                a
                for a in alerts
                if a["labels"]["alertname"] == "FarmQualityBelowTarget" and a["state"] == "firing"
            ]

        alerts = await wait_until(firing, 60, "FarmQualityBelowTarget firing")
        assert [a["labels"]["board"] for a in alerts] == ["kws-low"]
        assert "80%" in alerts[0]["annotations"]["description"]
        # And nothing else fires on this healthy farm.
        others = {
            a["labels"]["alertname"]
            for a in prometheus.api("alerts")["data"]["alerts"]
            if a["state"] == "firing"
        }
        assert others == {"FarmQualityBelowTarget"}, others

        # The operators' side: kws-high reserved (farm board reserve), kws-low checked by a
        # scheduled health check (queued as the reaper's tick queues a due board's, run by
        # the workers through its agent), and kws-high quarantined as a failed scheduled
        # check leaves it (that path end to end: test_board_ops.py).
        await lab.farm("board", "reserve", "kws-high", "--for", "1h", "--note", "probe rework")
        every_idle_board = HealthPolicy(interval_s=1, after_failures=0)
        assert schedule(lab.redis, rq_connection(lab.redis), every_idle_board, time.time()) == [
            "kws-low"
        ]
        await wait_until(
            lambda: lab.redis.hget(keys.SCHEDULED_CHECKS, "kws-low|passed"),
            60,
            "kws-low's scheduled check",
        )
        reason = "failed a scheduled health check (2 failures in a row): the DUT did not answer"
        quarantine.quarantine(lab.redis, "kws-high", reason, "controller")
        settled = time.time()

        # Every dashboard expression parses and returns data; every variable has values.
        # (Once both targets were scraped twice since the last run ended.)
        def scraped_since_settled() -> bool:
            result = prometheus.query("min(timestamp(up))")["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) > settled + 1.5

        await wait_until(scraped_since_settled, 30, "two scrapes after the sweep")
        empty, broken = [], []
        for dashboard, where, expr in dashboard_queries():
            if expr.startswith("label_values("):
                if not label_values(prometheus, substitute(expr)):
                    empty.append((dashboard, where, expr))
                continue
            answer = prometheus.query(substitute(expr))
            if answer["status"] != "success":
                broken.append((dashboard, where, expr, answer.get("error")))
            elif not answer["data"]["result"]:
                empty.append((dashboard, where, expr))
        assert not broken, broken
        assert not empty, empty
        exported = fetch(f"http://127.0.0.1:{exporter_port}/metrics")
        assert 'farm_scheduled_health_checks_total{board="kws-low",state="passed"} 1.0' in exported
        assert 'holder="' in exported and 'note="probe rework"' in exported

        # FarmBoardQuarantined is on its way (pending for its minute), with the reason.
        def quarantined() -> list[dict[str, Any]]:
            alerts = prometheus.api("alerts")["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "FarmBoardQuarantined"]

        (alert,) = await wait_until(quarantined, 30, "FarmBoardQuarantined pending")
        assert alert["labels"]["board"] == "kws-high", alert
        assert alert["annotations"]["description"].startswith(
            f"kws-high on pi-a is out of service: {reason}."
        ), alert

        # Every alert expression parses (most have nothing to say on a healthy farm).
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                answer = prometheus.query(rule["expr"])
                assert answer["status"] == "success", (rule["alert"], answer)
        loaded = prometheus.api("rules")["data"]["groups"]
        assert sum(len(g["rules"]) for g in loaded) == 14
        assert all(r["health"] == "ok" for g in loaded for r in g["rules"]), loaded
    except BaseException:
        print(lab.logs())
        if prometheus.log.exists():
            print(prometheus.log.read_text(errors="replace")[-3000:])
        raise
    finally:
        await prometheus.stop()


async def test_prometheus_scrapes_a_protected_exporter_that_refuses_everyone_else(
    tmp_path: Path,
) -> None:
    """`farm controller exporter` with a bearer token and TLS: a real Prometheus configured as
    deploy/prometheus/prometheus.yml's commented lines say (scheme https, the CA, the token
    file) scrapes it; a GET without the token, or with another one, gets 401."""
    pki = Pki.create(tmp_path / "pki")
    cert, key = pki.server("metrics")
    token = tmp_path / "metrics-token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    port = free_port()
    exporter = Proc(
        [
            *("--log-level", "info", "controller", "exporter", "--port", str(port)),
            *("--metrics-token-file", str(token)),
            *("--metrics-tls-cert", str(cert), "--metrics-tls-key", str(key)),
        ],
        tmp_path / "exporter.log",
        env={"FARM_REDIS_URL": REDIS_URL},
    )
    scrape = {
        "scheme": "https",
        "tls_config": {"ca_file": str(pki.ca)},
        "authorization": {"credentials_file": str(token)},
    }
    prometheus = Prometheus(tmp_path / "prometheus", {"farm-exporter": port}, scrape)
    await exporter.start()
    try:
        await prometheus.start()

        def scraped() -> bool:
            result = prometheus.query('farm_exporter_redis_up{job="farm-exporter"}')
            return bool(result["data"]["result"])

        await wait_until(scraped, 60, f"the protected exporter scraped ({exporter.log})")
        up = prometheus.query('up{job="farm-exporter"}')["data"]["result"]
        assert up[0]["value"][1] == "1"
        url = f"https://127.0.0.1:{port}/metrics"
        context = ssl.create_default_context(cafile=str(pki.ca))
        assert http_status(url, {}, context) == 401
        assert http_status(url, {"Authorization": "Bearer not-the-token"}, context) == 401
        # Plain HTTP gets no answer at all: the server waits for a TLS handshake.
        assert http_status(f"http://127.0.0.1:{port}/metrics", {}, None) == "no answer"
    finally:
        await prometheus.stop()
        await exporter.stop()


def http_status(url: str, headers: dict[str, str], context: ssl.SSLContext | None) -> int | str:
    """The status of a GET of ``url``, or "no answer"."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return "no answer"


def test_the_exporter_command_refuses_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "farm.cli",
                "controller",
                "exporter",
                "--redis",
                REDIS_URL,
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done  # and promptly: run() would raise past 60 s
