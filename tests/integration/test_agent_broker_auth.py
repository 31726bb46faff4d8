"""The agent reaches a broker that wants TLS and a password, as a lab's does: a real
mosquitto with a TLS listener (a certificate made here with openssl) and a password file made
with mosquitto_passwd."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.integration.farm_procs import (
    AGENT,
    FAST,
    Lab,
    free_port,
    send,
    start_lab,
    stop_lab,
    wait_until,
)


def make_tls_and_passwords(directory: Path) -> tuple[Path, Path, Path, Path]:
    """A self-signed certificate for 127.0.0.1 and a password file with user ``pi1``."""
    key, cert = directory / "server.key", directory / "server.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    passwd = directory / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "pi1", "s3cret"], check=True)
    secret = directory / "pi1.password"
    secret.write_text("s3cret\n")
    return key, cert, passwd, secret


def tls_listener(tmp_path: Path) -> tuple[int, str, Path, Path]:
    """A TLS listener with a password file: (port, mosquitto config lines, CA, password
    file of user pi1)."""
    certs = tmp_path / "certs"
    certs.mkdir()
    key, cert, passwd, secret = make_tls_and_passwords(certs)
    port = free_port()
    listener = (
        f"listener {port} 127.0.0.1\n"
        f"certfile {cert}\nkeyfile {key}\n"
        f"password_file {passwd}\nallow_anonymous false\n"
    )
    return port, listener, cert, secret


async def start_tls_lab(
    tmp_path: Path, listener: str, broker: dict[str, object], **options: Any
) -> Lab:
    """A lab with one kws board whose agent has ``broker`` as its agent.yaml broker section;
    the observer and the test's commands use the plain listener."""

    def secure(agent_yaml: Path) -> None:
        data = yaml.safe_load(agent_yaml.read_text())
        data["broker"] = broker
        agent_yaml.write_text(yaml.safe_dump(data))

    return await start_lab(
        tmp_path,
        f"- {{id: kws-a, model: kws01, latency: {json.dumps(FAST)}}}\n",
        broker_extra=listener,
        agent_config=secure,
        **options,
    )


async def test_agent_connects_over_tls_with_a_password_file(tmp_path: Path) -> None:
    tls_port, listener, cert, secret = tls_listener(tmp_path)
    broker = {
        "url": f"mqtts://127.0.0.1:{tls_port}",
        "username": "pi1",
        "password_file": str(secret),
        "tls": {"ca": str(cert)},
        "keepalive_s": 5,
    }
    lab = await start_tls_lab(tmp_path, listener, broker)
    try:
        assert f"event=mqtt_connected broker=mqtts://127.0.0.1:{tls_port}" in lab.agent.output()
        await lab.idle("kws-a")
        await send(
            lab.broker.url, AGENT, {"type": "health-check", "id": "hc-tls", "board": "kws-a"}
        )
        await wait_until(lambda: lab.observer.ack("hc-tls", "done"), 30, "health check over TLS")
        broker_log = (lab.broker.dir / "mosquitto.log").read_text()
        assert "farm-agent-lab1" in broker_log and "u'pi1'" in broker_log
    finally:
        await stop_lab(lab)


async def test_a_wrong_password_is_retried_with_backoff_not_fatal(tmp_path: Path) -> None:
    tls_port, listener, cert, secret = tls_listener(tmp_path)
    secret.write_text("wrong\n")
    broker = {
        "url": f"mqtts://pi1@127.0.0.1:{tls_port}",
        "password_file": str(secret),
        "tls": {"ca": str(cert)},
    }
    lab = await start_tls_lab(tmp_path, listener, broker, online=False)
    try:
        await wait_until(
            lambda: lab.agent.output().count("event=mqtt_disconnected") >= 2, 30, "retries"
        )
        assert "not authori" in lab.agent.output().lower()
        assert lab.agent.process is not None and lab.agent.process.returncode is None
        await asyncio.sleep(0.2)
        assert AGENT not in lab.observer.agent_status
    finally:
        await stop_lab(lab)
