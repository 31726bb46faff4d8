"""Structured logging: one event per line, as key=value pairs or as JSON."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from typing import Literal

LogFormat = Literal["kv", "json"]


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; ``key=value`` pairs in the message become fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        fields = _pairs(message)
        if fields:
            entry.update(fields)
        else:
            entry["msg"] = message
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _pairs(message: str) -> dict[str, str]:
    """Split ``a=1 b='x y'`` style messages into fields (values may be Python reprs)."""
    fields: dict[str, str] = {}
    try:
        tokens = shlex.split(message)
    except ValueError:
        return {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key.isidentifier():
            return {}
        fields[key] = value
    return fields


def setup_logging(level: str = "info", fmt: LogFormat = "kv") -> None:
    """Send every log record to stderr, one event per line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
                "%Y-%m-%dT%H:%M:%S",
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
