"""TLS towards the MQTT broker, the same for every client: the agent (``broker.tls`` in
agent.yaml) and the controller's processes (``FARM_MQTT_CA``, ``FARM_MQTT_CERT``,
``FARM_MQTT_KEY``).

:meth:`ClientTls.context` checks the broker's certificate against the given CA (the system's
CA certificates without one) and its host name, and presents a client certificate when one is
given (brokers with ``require_certificate true``). Every file problem is a :class:`TlsError`
naming the file, raised when the context is built, so a daemon or a command can report it
before it ever reaches the network.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsError(ValueError):
    """A TLS setting that cannot work; the message names the file or the setting."""


@dataclass(frozen=True)
class ClientTls:
    """The TLS files of one MQTT client."""

    ca: Path | None = None
    """CA certificate (PEM) that signed the broker's certificate."""
    cert: Path | None = None
    """Client certificate (PEM), for a broker that requires one."""
    key: Path | None = None
    """The client certificate's private key (PEM, not encrypted)."""
    insecure: bool = False
    """Skip verifying the broker's certificate and host name (testing only)."""

    def context(self) -> ssl.SSLContext:
        """A client SSL context; :class:`TlsError` names a missing, unreadable or invalid file,
        or a certificate given without its key (or the other way round)."""
        if self.cert is not None and self.key is None:
            raise TlsError(f"the client certificate {self.cert} needs its key: give the key too")
        if self.key is not None and self.cert is None:
            raise TlsError(f"the client key {self.key} needs its certificate: give it too")
        for path, what in ((self.ca, "CA certificate"), (self.cert, "client certificate")):
            if path is not None:
                _readable(path, what)
        if self.key is not None:
            _readable(self.key, "client key")
        try:
            # With a CA file only that CA is trusted, not the system's too.
            context = ssl.create_default_context(cafile=None if self.ca is None else str(self.ca))
        except ssl.SSLError as exc:
            raise TlsError(
                f"the CA certificate {self.ca} is not a PEM certificate: {exc}"
            ) from None
        if self.cert is not None and self.key is not None:
            key = self.key

            def encrypted() -> bytes:
                # Without this callback OpenSSL would prompt on the terminal; a daemon has none.
                raise TlsError(f"the client key {key} is encrypted: give an unencrypted key")

            try:
                context.load_cert_chain(str(self.cert), str(self.key), password=encrypted)
            except ssl.SSLError as exc:
                raise TlsError(
                    f"the client certificate {self.cert} and key {self.key} are not a PEM "
                    f"certificate and its matching key: {exc}"
                ) from None
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _readable(path: Path, what: str) -> None:
    """:class:`TlsError` naming ``path`` unless it is a file this process can read."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
