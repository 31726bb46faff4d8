"""Where the controller's processes and client commands find Redis, the broker and the results:
``--redis URL`` / ``--broker URL`` / ``--results DIR``, else ``FARM_REDIS_URL`` /
``FARM_MQTT_URL`` / ``FARM_RESULTS_DIR``, else localhost and the user's data directory.

TLS towards the broker (an ``mqtts://`` URL): ``--mqtt-ca`` / ``--mqtt-cert`` / ``--mqtt-key``,
else ``FARM_MQTT_CA`` / ``FARM_MQTT_CERT`` / ``FARM_MQTT_KEY``; without a CA the system's CA
certificates are used."""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from farm.mqtt_tls import ClientTls, TlsError

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def default_results() -> Path:
    """``$XDG_DATA_HOME/tinyfarm/results`` (``~/.local/share/tinyfarm/results``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "tinyfarm" / "results"


#: The environment variables of the broker's TLS files, by :class:`ClientTls` field.
TLS_ENV = {"ca": "FARM_MQTT_CA", "cert": "FARM_MQTT_CERT", "key": "FARM_MQTT_KEY"}


@dataclass(frozen=True)
class Settings:
    """The three locations every controller process needs, and the broker's TLS files."""

    redis_url: str
    broker_url: str
    results: Path
    mqtt_tls: ClientTls = field(default_factory=ClientTls)

    @classmethod
    def resolve(
        cls,
        redis: str | None = None,
        broker: str | None = None,
        results: Path | None = None,
        *,
        mqtt_ca: Path | None = None,
        mqtt_cert: Path | None = None,
        mqtt_key: Path | None = None,
    ) -> Settings:
        """Options first, then the environment, then the defaults."""

        def tls_file(option: Path | None, name: str) -> Path | None:
            value = option or os.environ.get(TLS_ENV[name])
            return Path(value) if value else None

        return cls(
            redis or os.environ.get("FARM_REDIS_URL") or DEFAULT_REDIS,
            broker or os.environ.get("FARM_MQTT_URL") or DEFAULT_BROKER,
            results or Path(os.environ.get("FARM_RESULTS_DIR") or default_results()),
            ClientTls(
                tls_file(mqtt_ca, "ca"), tls_file(mqtt_cert, "cert"), tls_file(mqtt_key, "key")
            ),
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment that makes :meth:`resolve` in a child process find these settings
        (an unset TLS file is empty: it hides one the parent's environment may hold)."""
        env = {
            "FARM_REDIS_URL": self.redis_url,
            "FARM_MQTT_URL": self.broker_url,
            "FARM_RESULTS_DIR": str(self.results),
        }
        for name, variable in TLS_ENV.items():
            path = getattr(self.mqtt_tls, name)
            env[variable] = "" if path is None else str(path.absolute())
        return env

    def mqtt_tls_context(self) -> ssl.SSLContext | None:
        """The SSL context of every controller MQTT client: None for ``mqtt://``.
        :class:`~farm.mqtt_tls.TlsError` names a file that cannot be used, or TLS files given
        with a plain ``mqtt://`` URL (they would be ignored: the connection would not be
        encrypted)."""
        if urlsplit(self.broker_url).scheme == "mqtts":
            return self.mqtt_tls.context()
        given = [
            f"{variable}={path}"
            for name, variable in TLS_ENV.items()
            if (path := getattr(self.mqtt_tls, name)) is not None
        ]
        if given:
            raise TlsError(
                f"TLS files ({', '.join(given)}) with the plain broker URL "
                f"{redacted(self.broker_url)}: use mqtts://"
            )
        return None

    @property
    def broker_host_port(self) -> tuple[str, int]:
        """Host and port of the broker URL."""
        parts = urlsplit(self.broker_url)
        return parts.hostname or "127.0.0.1", parts.port or (
            8883 if parts.scheme == "mqtts" else 1883
        )

    @property
    def broker_credentials(self) -> tuple[str | None, str | None]:
        """User and password given in the broker URL, if any."""
        parts = urlsplit(self.broker_url)
        return parts.username, parts.password


def redacted(url: str) -> str:
    """``url`` with its passwords replaced by ``***``, for messages and logs: the one in the
    user part and a ``password=`` query parameter (redis-py reads one)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()
