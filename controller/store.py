"""Reading and writing the controller's state in Redis (layout: :mod:`controller.keys`).

Synchronous redis-py: the callers are RQ jobs (synchronous by nature), the reaper and
the client commands. Ingest, the one asyncio process, writes its own keys.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from controller import keys
from controller.settings import redacted
from farm.logs import get_logger

log = get_logger("controller.store")

#: A lease lives this long unless renewed; the holder renews it every third of it, so a dead
#: worker's board is free again within one TTL.
LEASE_TTL_S = 15.0

#: How a board operation's lease token starts: ``op:<operation>:<who>:``.
OPERATION = "op:"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
#: Renews KEYS[1] if it holds ARGV[1]; else takes it if it is free. 1 if held after.
HOLD = """
local v = redis.call('get', KEYS[1])
if v == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not v then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class StoreError(Exception):
    """Redis is unreachable, refuses us or holds something unexpected; the message names the
    URL (its password masked)."""


def explain(url: str, exc: redis.RedisError) -> str:
    """One line saying why Redis at ``url`` failed us: no credentials, wrong ones, a command
    the URL's user may not run, no server answering, or another error reply."""
    where = f"Redis at {redacted(url)}"
    user = urlsplit(url).username or "default"
    if isinstance(exc, redis.AuthenticationError):
        if urlsplit(url).password is None:
            return (
                f"{where} requires a user and password: put them in the URL "
                f"(redis://USER:PASSWORD@HOST:PORT/DB, rediss:// for TLS)"
            )
        return f"{where} refused user {user}: {exc}"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"{where}: user {user} is not allowed this: {exc}"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return f"{where} is not reachable: {exc}"
    return f"{where} answered an error: {exc}"


def connect(url: str) -> redis.Redis:
    """A client for ``url`` that has answered a PING (``StoreError`` saying why if not).

    ``url``: ``redis://[USER:PASSWORD@]HOST:PORT/DB``, or ``rediss://`` for TLS with redis-py's
    options in the query (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ...)."""
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StoreError(explain(url, exc)) from None
    return client


def rq_connection(client: redis.Redis) -> redis.Redis:
    """The same server, user and TLS for RQ, which needs raw bytes (not decoded replies)."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    # The class carries the URL's scheme: SSLConnection for rediss://.
    return redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    )


def new_id(prefix: str) -> str:
    """A sortable, unique id: ``<prefix>-YYYYmmdd-HHMMSS-xxxx``."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# -- leases ------------------------------------------------------------------------------------


@dataclass
class Lease:
    """A board's lease, held by one run job."""

    client: redis.Redis
    board: str
    token: str
    ttl_s: float = LEASE_TTL_S

    @classmethod
    def acquire(
        cls, client: redis.Redis, board: str, ttl_s: float = LEASE_TTL_S, *, holder: str = ""
    ) -> Lease | None:
        """Take the lease, or ``None`` if someone else holds it. ``holder`` starts the token:
        a board operation's (:data:`OPERATION`...) tells a run job and a busy message who has
        the board; a run job's token is random alone."""
        token = holder + secrets.token_hex(8)
        if client.set(keys.lease(board), token, nx=True, px=int(ttl_s * 1000)):
            return cls(client, board, token, ttl_s)
        return None

    def renew(self) -> bool:
        """Extend the lease; False if it was lost (expired and taken, or deleted)."""
        return bool(
            self.client.eval(_RENEW, 1, keys.lease(self.board), self.token, int(self.ttl_s * 1000))
        )

    def hold(self) -> bool:
        """Renew the lease, or take it again with the same token if it lapsed and nobody took
        it meanwhile; whether it is ours now."""
        return bool(
            self.client.eval(HOLD, 1, keys.lease(self.board), self.token, int(self.ttl_s * 1000))
        )

    def release(self) -> None:
        """Give the board back (only if still ours)."""
        self.client.eval(_RELEASE, 1, keys.lease(self.board), self.token)

    def keep(self, stop: threading.Event, lost: threading.Event) -> None:
        """Renew the lease every third of its TTL until ``stop`` is set (a thread's target);
        set ``lost`` and return if it was lost. A Redis error is logged: the next renewal may
        get through."""
        while not stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    lost.set()
                    return
            except redis.RedisError as exc:
                log.warning("lease_renew_failed", board=self.board, error=str(exc))


def lease_holder(token: str | None) -> str | None:
    """What holds a board whose lease token is ``token``: ``flash by alice`` for an
    operation's; None for a run job's (or no lease)."""
    if not token or not token.startswith(OPERATION):
        return None
    _, what, who, _ = [*token.split(":", 3), "", "", ""][:4]
    return f"{what} by {who}"


# -- runs --------------------------------------------------------------------------------------


def get_run(client: redis.Redis, run_id: str) -> dict[str, str]:
    """A run's hash (empty if unknown)."""
    return client.hgetall(keys.run(run_id))


def run_firmware(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run hash's ``firmware`` (JSON object), or None if it has none or it is not one."""
    text = run.get("firmware")
    try:
        value = json.loads(text) if isinstance(text, str) and text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def sweep_runs(client: redis.Redis, sweep_id: str) -> list[tuple[str, dict[str, str]]]:
    """Every run of a sweep, in order, with its hash: two round trips however many runs."""
    run_ids = client.lrange(keys.sweep_runs(sweep_id), 0, -1)
    pipe = client.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hgetall(keys.run(run_id))
    return list(zip(run_ids, pipe.execute(), strict=True))


def set_run(client: redis.Redis, run_id: str, **fields: Any) -> None:
    """Update run fields (non-strings are stored as JSON)."""
    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    client.hset(keys.run(run_id), mapping=values)


def fail_reason(client: redis.Redis, run_id: str, reason: str) -> None:
    """Record a failure's reason (the run's list of reasons grows; ``reason`` is the last)."""
    run = get_run(client, run_id)
    reasons = json.loads(run.get("reasons") or "[]")
    reasons.append(reason)
    set_run(client, run_id, reasons=reasons, reason=reason)


def samples(client: redis.Redis, run_id: str) -> dict[int, dict[str, Any]]:
    """Every stored sample of a run, by seq."""
    raw = client.hgetall(keys.run_samples(run_id))
    return {int(seq): json.loads(value) for seq, value in raw.items()}


def sample_seqs(client: redis.Redis, run_id: str) -> list[int]:
    """The seqs stored for a run, sorted."""
    return sorted(int(s) for s in client.hkeys(keys.run_samples(run_id)))


def ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted seqs as half-open ranges: ``[0, 1, 2, 5]`` -> ``[(0, 3), (5, 6)]``."""
    found: list[tuple[int, int]] = []
    for seq in seqs:
        if found and found[-1][1] == seq:
            found[-1] = (found[-1][0], seq + 1)
        else:
            found.append((seq, seq + 1))
    return found


def board_status(client: redis.Redis, board_id: str) -> dict[str, Any] | None:
    """A board's last retained status (with ``agent`` and ``last_seen`` added)."""
    return _status(client.hgetall(keys.board(board_id)))


def _status(raw: dict[str, str]) -> dict[str, Any] | None:
    if not raw or not raw.get("status"):
        return None
    status = json.loads(raw["status"])
    status["agent"] = raw.get("agent", status.get("agent"))
    status["last_seen"] = float(raw.get("last_seen") or 0)
    return status


def all_boards(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every known board's status, by id (two round trips however many boards)."""
    board_ids = sorted(client.smembers(keys.BOARDS))
    with client.pipeline(transaction=False) as pipe:
        for board_id in board_ids:
            pipe.hgetall(keys.board(board_id))
        raws = pipe.execute()
    found = {}
    for board_id, raw in zip(board_ids, raws, strict=True):
        status = _status(raw)
        if status is not None:
            found[board_id] = status
    return found
