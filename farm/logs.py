"""Structured logging through structlog: events carry fields, rendered once at the edge.

Every module asks :func:`get_logger` for a logger and logs an event name with keyword fields
(``log.warning("resync_failed", board=board, error=exc)``). Fields stay Python values until
the one handler on the root logger renders them, as logfmt ``key=value`` pairs (``kv``, for a
terminal) or one JSON object per line (``json``, for a log shipper), so a value holding commas,
quotes or newlines is quoted or escaped, never re-parsed. Libraries that log through the
standard library (rq, aiomqtt, asyncio) go through the same handler and renderer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["kv", "json"]

# Applied to structlog events and to records from standard-library loggers alike.
_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
]

structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,
        *_SHARED,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """The logger for one module: ``log.info("event_name", key=value, ...)``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def _stringify(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Exceptions and other objects become their ``repr`` so JSON keeps their type and text."""
    for key, value in event.items():
        if isinstance(value, BaseException):
            event[key] = repr(value)
    return event


def renderer(fmt: LogFormat) -> structlog.stdlib.ProcessorFormatter:
    """The formatter that turns one event into one line in the given format."""
    final: Any
    if fmt == "json":
        final = structlog.processors.JSONRenderer(default=repr)
    else:
        final = structlog.processors.LogfmtRenderer(
            key_order=["ts", "level", "logger", "event"], drop_missing=True
        )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _stringify,
            structlog.processors.format_exc_info,
            final,
        ],
    )


def setup_logging(level: str = "info", fmt: LogFormat = "kv") -> None:
    """Send every log event, ours and the libraries', to stderr, one event per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(renderer(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
