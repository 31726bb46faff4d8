"""The whole farm over the shipped broker config with client certificates required
(``cafile`` + ``require_certificate true`` turned on, deploy_broker.py): simulated boards, the
agent, ingest and RQ workers each connect over TLS with a certificate of the lab CA and their
password, and a submitted run completes; a controller trusting another CA fails with the
verification error, bounded by the client's timeout."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import yaml

from tests.integration.controller_lab import REDIS_URL, ControllerLab
from tests.integration.deploy_broker import (
    CLIENT_CERTIFICATES,
    CONTROLLER,
    PI1,
    Broker,
    shipped_broker,
)
from tests.integration.farm_procs import Proc, agent_proc, start_sim, wait_until
from tests.tls_certs import Pki

BOARD = "- {id: kws-1, model: kws01, latency: {median_s: 0.002}}\n"


@dataclass
class ControllerBroker:
    """The shipped-config broker as :class:`ControllerLab` uses its broker: the controller's
    URL and an asynchronous stop."""

    broker: Broker

    @property
    def url(self) -> str:
        return self.broker.url(CONTROLLER)

    async def stop(self) -> None:
        self.broker.stop()


class TlsLab(ControllerLab):
    """The controller lab on a broker from the shipped config: every process connects with
    ``mqtts://``, the lab CA and a client certificate of its user."""

    @property
    def tls_broker(self) -> Broker:
        assert isinstance(self.broker, ControllerBroker)
        return self.broker.broker

    @property
    def env(self) -> dict[str, str]:
        cert, key = self.tls_broker.pki.client(CONTROLLER)
        return {
            **super().env,
            "FARM_MQTT_CA": str(self.tls_broker.ca),
            "FARM_MQTT_CERT": str(cert),
            "FARM_MQTT_KEY": str(key),
        }

    async def add_agent(self, agent: str, boards: str, *, dataset_limit: int = 10) -> None:
        """`farm sim` and its agent, whose agent.yaml gets the broker section of a Pi."""
        out = self.dir / f"sim-{agent}"
        self.sims[agent] = await start_sim(
            out,
            boards,
            seed=5,
            agent=agent,
            broker=f"mqtts://127.0.0.1:{self.tls_broker.port}",
            dataset_limit=dataset_limit,
        )
        secret = self.dir / f"{agent}.password"
        secret.write_text(self.tls_broker.passwords[agent] + "\n")
        cert, key = self.tls_broker.pki.client(agent)
        config = yaml.safe_load((out / "agent.yaml").read_text())
        config["broker"] = {
            "url": f"mqtts://127.0.0.1:{self.tls_broker.port}",
            "username": agent,
            "password_file": str(secret),
            "tls": {"ca": str(self.tls_broker.ca), "cert": str(cert), "key": str(key)},
        }
        (out / "agent.yaml").write_text(yaml.safe_dump(config))
        proc = agent_proc(out, self.dir / f"agent-{agent}.log")
        await proc.start()
        self.agents[agent] = proc


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[TlsLab]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    broker = shipped_broker(tmp_path / "mqtt", enable=CLIENT_CERTIFICATES)
    farm = TlsLab(tmp_path, ControllerBroker(broker), client)  # type: ignore[arg-type]
    try:
        yield farm
    finally:
        await farm.stop()
        client.flushdb()


async def test_a_run_completes_with_every_client_on_tls_and_certificates(lab: TlsLab) -> None:
    await lab.add_agent(PI1, BOARD)
    await lab.start_controller(workers=1)
    await lab.boards_ready(["kws-1"])
    _, out, _ = await lab.farm(
        "submit", "--benchmark", "kws", "--mode", "accuracy", "--wait", "--json"
    )
    run_id = json.loads(out)["runs"][0]
    run = lab.redis.hgetall(f"farm:run:{run_id}")
    assert run["state"] == "completed", (run, lab.logs())
    assert json.loads(run["summary"])["samples"] == 10
    lab.tls_broker.stop()
    log = lab.tls_broker.log.read_text()
    # Every login was the user of a client certificate, over the only (TLS) listener: the
    # agent, ingest and the run job's command publisher.
    assert f"as farm-agent-{PI1} " in log and f"u'{PI1}'" in log
    assert "as farm-ingest-" in log
    assert f"as farm-job-{run_id}-" in log
    assert log.count(f"u'{CONTROLLER}'") >= 2


async def test_a_controller_trusting_another_ca_fails_clearly_and_promptly(
    lab: TlsLab, tmp_path: Path
) -> None:
    await lab.add_agent(PI1, BOARD)
    await lab.start_controller(workers=0)
    await lab.boards_ready(["kws-1"])
    wrong = {**lab.env, "FARM_MQTT_CA": str(Pki.create(tmp_path / "other-ca").ca)}
    stray = Proc(
        ["--log-level", "info", "controller", "ingest", "--client-id", "stray"],
        tmp_path / "stray-ingest.log",
        env=wrong,
    )
    worker = Proc(
        ["--log-level", "info", "controller", "worker", "--processes", "1"],
        tmp_path / "worker-wrong-ca.log",
        env=wrong,
    )
    lab.workers += [stray, worker]  # stopped with the lab
    await stray.start()
    await worker.start()
    _, out, _ = await lab.farm("submit", "--benchmark", "kws", "--mode", "accuracy", "--json")
    run_id = json.loads(out)["runs"][0]
    # The aiomqtt clients' timeout is 10 s; the rest is process start-up on a busy machine.
    reason = await wait_until(
        lambda: lab.redis.hget(f"farm:run:{run_id}", "reason"), 60, "the run's failure reason"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in reason, reason
    assert lab.tls_broker.passwords[CONTROLLER] not in reason  # the URL is shown redacted
    assert lab.redis.hget(f"farm:run:{run_id}", "state") != "completed"
    await wait_until(
        lambda: "CERTIFICATE_VERIFY_FAILED" in stray.output(), 60, "ingest's verify failure"
    )
    assert "event=broker_unavailable" in stray.output()
