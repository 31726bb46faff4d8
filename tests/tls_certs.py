"""A lab CA and certificates signed by it, made with the openssl command line as
deploy/README.md tells a lab to: a server certificate for the broker (its names in the
subjectAltName) and client certificates (their user name as the common name)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

#: The names a broker certificate carries here: the loopback address the tests connect to.
SERVER_NAMES = ("IP:127.0.0.1", "DNS:localhost")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _key_and_csr(directory: Path, name: str, subject: str) -> tuple[Path, Path]:
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-subj", subject, "-keyout", str(key), "-out", str(csr)),
    )
    return key, csr


@dataclass(frozen=True)
class Pki:
    """A CA in ``dir`` (``ca.crt``, ``ca.key``) that signs the certificates made with it."""

    dir: Path

    @classmethod
    def create(cls, directory: Path, name: str = "tinyfarm test CA") -> Pki:
        """A new self-signed CA."""
        directory.mkdir(parents=True, exist_ok=True)
        _openssl(
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-days", "2", "-subj", f"/CN={name}"),
            *("-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.crt")),
        )
        return cls(directory)

    @property
    def ca(self) -> Path:
        """The CA certificate (what clients and the broker are given as ``cafile``)."""
        return self.dir / "ca.crt"

    def _sign(self, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
        key, csr = _key_and_csr(self.dir, name, subject)
        ext = self.dir / f"{name}.ext"
        ext.write_text(extensions)
        cert = self.dir / f"{name}.crt"
        _openssl(
            *("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey"),
            *(str(self.dir / "ca.key"), "-CAcreateserial", "-days", "2"),
            *("-extfile", str(ext), "-out", str(cert)),
        )
        return cert, key

    def server(
        self, name: str = "server", names: tuple[str, ...] = SERVER_NAMES
    ) -> tuple[Path, Path]:
        """A broker certificate and key for ``names`` (subjectAltName entries)."""
        return self._sign(
            name,
            "/CN=tinyfarm broker",
            f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth\n",
        )

    def client(self, user: str) -> tuple[Path, Path]:
        """A client certificate and key whose common name is ``user`` (made once)."""
        cert, key = self.dir / f"client-{user}.crt", self.dir / f"client-{user}.key"
        if cert.exists() and key.exists():
            return cert, key
        return self._sign(f"client-{user}", f"/CN={user}", "extendedKeyUsage=clientAuth\n")
