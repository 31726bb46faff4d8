"""A real mosquitto started from the shipped broker files (deploy/mosquitto/mosquitto.conf and
acl), with only the listener's port and the file paths changed (and ``user root`` when the
tests run as root: mosquitto would otherwise drop to the ``mosquitto`` user, which cannot read
the test's files); optionally with the config's commented client-certificate lines turned on.
The certificates come from a lab CA made with openssl (tests/tls_certs.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from farm.mqtt_tls import ClientTls
from tests.integration.farm_procs import free_port
from tests.tls_certs import Pki

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SHIPPED_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
SHIPPED_ACL = DEPLOY / "mosquitto" / "acl"

CONTROLLER = "farm-controller"
PI1, PI2 = "lab-pi-01", "lab-pi-02"
#: The shipped listener: the only one, MQTT over TLS.
SHIPPED_PORT = 8883
#: The commented lines of the shipped config that require client certificates.
CLIENT_CERTIFICATES = ("cafile", "require_certificate")


def render_config(
    shipped: str, *, port: int, paths: dict[str, str], enable: tuple[str, ...] = ()
) -> str:
    """The shipped config with its listener moved to ``port`` on loopback, the options of
    ``paths`` pointing at the test's files and the commented options ``enable`` turned on;
    every other line as shipped. Fails if the shipped file lacks the listener, a path option
    or a commented option the test expects."""
    out, seen_ports, seen = [], [], set()
    for line in shipped.splitlines():
        words = line.split()
        if words and words[0].startswith("#") and words[0][1:] in enable:
            words[0] = words[0][1:]
            line = " ".join(words)
        if words and words[0] == "listener":
            seen_ports.append(int(words[1]))
            line = f"listener {port} 127.0.0.1"
        elif words and words[0] in paths:
            seen.add(words[0])
            line = f"{words[0]} {paths[words[0]]}"
        elif words and words[0] in enable:
            seen.add(words[0])
        out.append(line)
    assert seen_ports == [SHIPPED_PORT], f"shipped listeners {seen_ports}, expected one TLS"
    expected = {name for name in paths if name != "cafile" or "cafile" in enable}
    assert seen == expected | set(enable), f"shipped options {seen}, expected {expected}"
    if os.geteuid() == 0:
        out.append("user root")
    return "\n".join(out) + "\n"


@dataclass
class Broker:
    """A mosquitto started from the shipped config; ``client_certificates``: with the
    config's commented client-certificate lines (``enable``) turned on."""

    dir: Path
    acl: Path
    passwd: Path
    passwords: dict[str, str] = field(default_factory=dict)
    enable: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.pki = Pki.create(self.dir / "certs")
        cert, key = self.pki.server()
        (self.dir / "data").mkdir(exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            render_config(
                SHIPPED_CONF.read_text(),
                port=self.port,
                paths={
                    "password_file": str(self.passwd),
                    "acl_file": str(self.acl),
                    "persistence_location": f"{self.dir / 'data'}/",
                    "certfile": str(cert),
                    "keyfile": str(key),
                    "cafile": str(self.pki.ca),
                },
                enable=self.enable,
            )
        )
        self.log = self.dir / "mosquitto.log"

    @property
    def ca(self) -> Path:
        """The lab CA: it signed the broker's certificate (and the clients')."""
        return self.pki.ca

    def url(self, user: str) -> str:
        """``mqtts://user:password@127.0.0.1:port``, as a controller is configured."""
        return f"mqtts://{user}:{self.passwords[user]}@127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mosquitto did not start from the shipped config: {self.log.read_text()}"
                    ) from None
                time.sleep(0.05)

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads the password file and the ACL."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(
        self,
        user: str | None,
        *,
        tls: bool = True,
        password: str | None = None,
        identifier: str | None = None,
        will: aiomqtt.Will | None = None,
        certificate: bool | None = None,
    ) -> aiomqtt.Client:
        """A client of ``user`` (None: anonymous), over TLS unless ``tls`` is false (which the
        broker must refuse); with a client certificate of ``user`` signed by the lab CA when
        ``certificate`` (default: when the broker requires one)."""
        if certificate is None:
            certificate = "require_certificate" in self.enable
        cert, key = self.pki.client(user or "anonymous") if certificate else (None, None)
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            username=user,
            password=password or (self.passwords.get(user) if user else None),
            identifier=identifier or f"test-{user}-{uuid.uuid4().hex[:6]}",
            tls_context=ClientTls(self.ca, cert, key).context() if tls else None,
            will=will,
            timeout=5,
        )

    def agent(self, agent: str, **kwargs: object) -> aiomqtt.Client:
        """An agent's client, over TLS as on a Pi."""
        return self.client(agent, **kwargs)  # type: ignore[arg-type]


def add_users(passwd: Path, users: dict[str, str]) -> None:
    """Users in a password file, written by mosquitto_passwd."""
    for user, password in users.items():
        create = [] if passwd.exists() else ["-c"]
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
        )


def shipped_broker(directory: Path, *, enable: tuple[str, ...] = ()) -> Broker:
    """A started broker from the shipped config and the shipped ACL (unchanged, read where it
    is), with the controller's user and two agents, each named after its agent id."""
    passwords = {CONTROLLER: "ctl-" + uuid.uuid4().hex, PI1: "p1-secret", PI2: "p2-secret"}
    directory.mkdir(parents=True, exist_ok=True)
    passwd = directory / "passwd"
    add_users(passwd, passwords)
    server = Broker(
        directory / "broker", acl=SHIPPED_ACL, passwd=passwd, passwords=passwords, enable=enable
    )
    server.start()
    return server
