"""Where the controller's processes and client commands find Redis, the broker and the results:
``--redis URL`` / ``--broker URL`` / ``--results DIR``, else ``FARM_REDIS_URL`` /
``FARM_MQTT_URL`` / ``FARM_RESULTS_DIR``, else localhost and the user's data directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def default_results() -> Path:
    """``$XDG_DATA_HOME/tinyfarm/results`` (``~/.local/share/tinyfarm/results``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "tinyfarm" / "results"


@dataclass(frozen=True)
class Settings:
    """The three locations every controller process needs."""

    redis_url: str
    broker_url: str
    results: Path

    @classmethod
    def resolve(
        cls, redis: str | None = None, broker: str | None = None, results: Path | None = None
    ) -> Settings:
        """Options first, then the environment, then the defaults."""
        return cls(
            redis or os.environ.get("FARM_REDIS_URL") or DEFAULT_REDIS,
            broker or os.environ.get("FARM_MQTT_URL") or DEFAULT_BROKER,
            results or Path(os.environ.get("FARM_RESULTS_DIR") or default_results()),
        )

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
