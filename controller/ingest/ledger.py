"""Where the handlers write: the Redis client, and the outcome counters, kept both in Redis
(``farm:ingest:counters``, the totals over every ingest process) and in this process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from controller import keys


class Ledger:
    """The Redis client (:attr:`redis`, once set) and the counters (:attr:`counters`): a
    handler's writes and its counts go out together (:meth:`commit`)."""

    def __init__(self, counters: Counter[str], client: aioredis.Redis | None = None) -> None:
        self.counters = counters
        """Everything counted since start (Redis has the totals over all processes)."""
        self.client = client
        """The Redis client, or ``None`` before the service has made one."""

    @property
    def redis(self) -> aioredis.Redis:
        """The Redis client; raises ``RuntimeError`` before there is one."""
        if self.client is None:
            raise RuntimeError("Ingest.run() has not started")
        return self.client

    async def commit(self, pipe: Any | None, counts: Mapping[str, int]) -> list[Any]:
        """Execute ``pipe`` (if any) with the counter increments appended; count locally
        only once Redis has them, so a retried message is not counted twice here."""
        own = pipe is None
        if own:
            pipe = self.redis.pipeline(transaction=False)
        try:
            for name, value in counts.items():
                if value:
                    pipe.hincrby(keys.INGEST_COUNTERS, name, value)
            results = await pipe.execute()
        finally:
            if own:
                await pipe.reset()
        self.counters.update({k: v for k, v in counts.items() if v})
        return results
