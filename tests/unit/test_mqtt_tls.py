"""The MQTT clients' TLS context (farm.mqtt_tls) and the controller's TLS settings: every file
problem is an error naming the file, before any connection; the CLI exits 2 with it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from controller.settings import Settings, redacted
from farm.mqtt_tls import ClientTls, TlsError
from tests.tls_certs import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = Pki.create(tmp_path_factory.mktemp("pki"))
    pki.server()
    pki.client("farm-controller")
    return pki


def test_a_context_verifies_the_broker_and_presents_the_client_certificate(pki: Pki) -> None:
    cert, key = pki.dir / "client-farm-controller.crt", pki.dir / "client-farm-controller.key"
    context = ClientTls(pki.ca, cert, key).context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "tinyfarm test CA"),),)
    ]
    insecure = ClientTls(pki.ca, insecure=True).context()
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("ca-missing",), r"cannot read the CA certificate .*ca-missing: No such file"),
        (("client-farm-controller.key",), r"CA certificate .*\.key is not a PEM certificate"),
        ((None, "client-farm-controller.crt"), r"client certificate .*\.crt needs its key"),
        ((None, None, "client-farm-controller.key"), r"client key .*\.key needs its certificate"),
        ((None, "client-farm-controller.crt", "gone.key"), r"cannot read the client key .*gone"),
        ((None, "client-farm-controller.crt", "server.key"), r"server\.key are not a PEM cert"),
    ],
)
def test_each_unusable_file_is_named(pki: Pki, files: tuple[str | None, ...], message: str) -> None:
    paths = [None if f is None else pki.dir / f for f in files]
    with pytest.raises(TlsError, match=message):
        ClientTls(*paths).context()


def test_an_encrypted_key_is_an_error_not_a_prompt(pki: Pki, tmp_path: Path) -> None:
    locked = tmp_path / "locked.key"
    subprocess.run(
        [
            *("openssl", "pkey", "-in", str(pki.dir / "client-farm-controller.key")),
            *("-aes256", "-passout", "pass:secret", "-out", str(locked)),
        ],
        check=True,
    )
    with pytest.raises(TlsError, match=r"client key .*locked\.key is encrypted"):
        ClientTls(cert=pki.dir / "client-farm-controller.crt", key=locked).context()


def test_the_controller_settings_read_the_environment_and_refuse_tls_on_plain_mqtt(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_MQTT_URL", "mqtts://farm-controller:pw@127.0.0.1:8883")
    monkeypatch.setenv("FARM_MQTT_CA", str(pki.ca))
    settings = Settings.resolve()
    assert settings.mqtt_tls == ClientTls(pki.ca)
    assert settings.mqtt_tls_context() is not None
    assert settings.env["FARM_MQTT_CA"] == str(pki.ca) and settings.env["FARM_MQTT_KEY"] == ""
    # An option beats the environment.
    other = pki.dir / "server.crt"
    assert Settings.resolve(mqtt_ca=other).mqtt_tls.ca == other
    plain = Settings.resolve(broker="mqtt://farm-controller:pw@127.0.0.1:1883")
    with pytest.raises(TlsError, match=r"FARM_MQTT_CA=.* plain broker URL .*:\*\*\*@.*mqtts://"):
        plain.mqtt_tls_context()
    monkeypatch.delenv("FARM_MQTT_CA")
    assert Settings.resolve(broker="mqtt://127.0.0.1:1883").mqtt_tls_context() is None


@pytest.mark.parametrize("command", [["ingest"], ["worker", "--burst"]])
def test_the_controller_processes_exit_2_naming_the_file(
    pki: Pki, tmp_path: Path, command: list[str]
) -> None:
    env = {
        **os.environ,
        "FARM_MQTT_URL": "mqtts://127.0.0.1:1",
        "FARM_MQTT_CERT": str(pki.dir / "client-farm-controller.crt"),
        "FARM_MQTT_KEY": str(tmp_path / "nowhere.key"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "farm.cli", "controller", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot read the client key" in done.stderr and "nowhere.key" in done.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "mqtts://farm-controller:s3cret@mosquitto:8883",
            "mqtts://farm-controller:***@mosquitto:8883",
        ),
        (
            "redis://u:s3cret@h:6379/0?password=s3cret&db=1",
            "redis://u:***@h:6379/0?password=***&db=1",
        ),
        (
            "rediss://h:6380/0?ssl_ca_certs=/ca.pem&password=s3cret",
            "rediss://h:6380/0?ssl_ca_certs=/ca.pem&password=***",
        ),
        ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
    ],
)
def test_urls_are_shown_without_their_passwords(url: str, shown: str) -> None:
    assert redacted(url) == shown
