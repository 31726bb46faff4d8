"""A redis-server of a test's own: a free port, no persistence, the deploy kit's ACL users
(``controller.redis_acl``, passwords made here), and optionally TLS only (no plain port),
with a client certificate required."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlencode

from controller.redis_acl import PASSWORD_ENV, acl_file
from tests.integration.farm_procs import free_port


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA): (certificate, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class RedisServer:
    """Start with :meth:`start`, stop with :meth:`stop`; :meth:`url` gives a user's URL."""

    def __init__(self, directory: Path, *, tls: bool = False) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.passwords = {user: secrets.token_urlsafe(18) for user in PASSWORD_ENV}
        self.acl = self.dir / "users.acl"
        self.acl.write_text(acl_file(self.passwords))
        self.log = self.dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.dir), "--aclfile", str(self.acl), "--logfile", str(self.log)]
        if tls:
            # Both certificates self-signed; each side trusts the other's through one CA file.
            self.server_cert, server_key = make_certificate(self.dir, "server")
            self.client_cert, self.client_key = make_certificate(self.dir, "client")
            self.ca = self.dir / "ca.crt"
            self.ca.write_bytes(self.server_cert.read_bytes() + self.client_cert.read_bytes())
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.server_cert), "--tls-key-file", str(server_key)]
            args += ["--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "yes"]
        else:
            args += ["--port", str(self.port)]
        self.args = args

    def url(self, user: str | None = "farm-controller", *, password: str | None = None) -> str:
        """The URL of ``user`` (``None``: no credentials) with its password unless
        ``password`` is given; over TLS with the client certificate."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if user is not None:
            auth = f"{user}:{password if password is not None else self.passwords[user]}@"
        url = f"{scheme}://{auth}127.0.0.1:{self.port}/0"
        if self.tls:
            query = {
                "ssl_ca_certs": self.ca,
                "ssl_certfile": self.client_cert,
                "ssl_keyfile": self.client_key,
                "ssl_cert_reqs": "required",
            }
            url += "?" + urlencode(query)
        return url

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        self.process = subprocess.Popen(["redis-server", *self.args])
        give_up = time.monotonic() + 20
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        log = self.log.read_text() if self.log.exists() else ""
        raise RuntimeError(f"redis-server did not start on {self.port}:\n{log[-2000:]}")

    def stop(self) -> None:
        """Stop it (no persistence to save)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None
