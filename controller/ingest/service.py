"""The ingest service: the MQTT connection (persistent session, plain or shared subscription,
reconnection with backoff), every message handed to the in-order executor and retried while
Redis is unavailable, and :func:`main` (``farm controller ingest``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
from collections import Counter

import aiomqtt
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from controller import keys
from controller.ingest.acks import QOS0_QUEUE_LIMIT, IncomingQueue, ManualAcks
from controller.ingest.handlers import MAX_PAYLOAD_BYTES, Handlers
from controller.ingest.ledger import Ledger
from controller.ingest.ordering import InOrder, Partition, order_key
from controller.ingest.throttle import Throttle
from controller.metrics import DEFAULT_ADDR, IngestMetrics
from controller.metrics_http import MetricsAccess
from controller.settings import Settings
from farm.backoff import Backoff
from farm.logs import get_logger

log = get_logger("controller.ingest.service")

#: Messages handled at once (by default): messages of different runs (or agents) overlap, so
#: one's Redis round trip is not idle time for the next one's parsing. Bounded: each holds its
#: payload and a Redis connection, and the broker's in-flight window (``max_inflight_messages``,
#: 20 by default in Mosquitto) caps the unacknowledged QoS 1 messages anyway.
MAX_IN_FLIGHT = 16
#: How long publishing a refuse command may wait for the broker.
PUBLISH_TIMEOUT_S = 10.0
#: Redis errors that mean "not now" rather than "never": the message is retried.
TRANSIENT_REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoadingError (Redis loading its AOF)
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a replica during a failover
    redis_errors.OutOfMemoryError,  # the operator must act; the broker holds the backlog
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)


def default_client_id(instance: int = 0) -> str:
    """``farm-ingest-<hostname>-<instance>``: stable across restarts, so the broker keeps the
    session (and the messages queued for it) while the process is away."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "host"
    return f"farm-ingest-{host}-{instance}"


#: Every agent topic, in one plain subscription (the default).
ALL_TOPICS = "farm/v1/agent/#"
#: The retained status topics: always through a plain subscription. A shared subscription is
#: sent no retained messages (MQTT 5 says so; some brokers, mosquitto 2.0.11 among them, send
#: them all the same), so an agent online before ingest subscribed would stay unknown.
STATUS_TOPICS = ("farm/v1/agent/+/status", "farm/v1/agent/+/board/+/status")
#: Everything else an agent publishes (nothing of it retained): what a shared subscription
#: splits among the ingest processes of a group.
SHAREABLE_TOPICS = (
    "farm/v1/agent/+/heartbeat",
    "farm/v1/agent/+/events",
    "farm/v1/agent/+/board/+/run/#",
)


def subscription(group: str, share: bool) -> tuple[str, ...]:
    """The topic filters: every agent topic in one plain subscription; or, with ``share``,
    the statuses plainly and the rest in the shared subscription of ``group``."""
    if not share:
        return (ALL_TOPICS,)
    if not group or any(c in group for c in "/+#"):
        raise ValueError(f"invalid shared subscription group {group!r}")
    return STATUS_TOPICS + tuple(f"$share/{group}/{topic}" for topic in SHAREABLE_TOPICS)


class Ingest:
    """The ingest service (see :mod:`controller.ingest`). :meth:`run` serves until cancelled.

    ``share``/``group``: a shared subscription in ``group`` for all but the statuses (see
    :func:`subscription`), or (the default) one plain subscription;
    ``client_id`` (default :func:`default_client_id` of ``instance``): the persistent session;
    ``redis``: a client to use instead of one made from ``settings`` (it must decode
    responses); ``max_payload``: larger messages are rejected unread; ``concurrency``: how
    many messages are handled at once (see :class:`InOrder`; 1 handles them one by one);
    ``partition``: with a count above 1, this process handles only its share of the keys
    (:class:`Partition`: whole runs, agents, the statuses) and acknowledges the rest unread,
    so that several processes, each with a plain subscription of every agent topic, split the
    work and still handle each run and the statuses in order (not with ``share``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        group: str = "farm-ingest",
        share: bool = False,
        client_id: str | None = None,
        instance: int = 0,
        redis: aioredis.Redis | None = None,
        max_payload: int = MAX_PAYLOAD_BYTES,
        qos0_queue_limit: int = QOS0_QUEUE_LIMIT,
        concurrency: int = MAX_IN_FLIGHT,
        partition: Partition | None = None,
    ) -> None:
        self.partition = partition or Partition()
        if share and self.partition.count > 1:
            raise ValueError("a partition or a shared subscription, not both")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if redis is not None and not redis.connection_pool.connection_kwargs.get(
            "decode_responses"
        ):
            raise ValueError("the Redis client must be made with decode_responses=True")
        self.settings = settings
        self.topic_filters = subscription(group, share)
        self.client_id = client_id or default_client_id(instance)
        self.concurrency = concurrency
        self.counters: Counter[str] = Counter()
        """Everything counted since start (Redis has the totals over all processes)."""
        self.subscribed = asyncio.Event()
        """Set while connected and subscribed."""
        self._ledger = Ledger(self.counters, redis)
        self._owns_redis = redis is None
        self._queue = IncomingQueue(qos0_queue_limit, self.counters)
        self._client: aiomqtt.Client | None = None
        self._throttle = Throttle()
        self.metrics = IngestMetrics(self.counters, self._queue.qsize)
        """This process's Prometheus metrics (served by :func:`main` with a metrics port)."""
        self._handlers = Handlers(
            self._ledger,
            self.metrics,
            self._throttle,
            self._publish_command,
            max_payload=max_payload,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def redis(self) -> aioredis.Redis:
        """The Redis client (made by :meth:`run` unless one was given)."""
        return self._ledger.redis

    async def run(self) -> None:
        """Connect, subscribe and handle messages until cancelled; reconnect with backoff when
        the broker goes away. Redis outages are ridden out message by message."""
        if self._ledger.client is None:
            self._ledger.client = aioredis.Redis.from_url(
                self.settings.redis_url,
                decode_responses=True,
                socket_timeout=10,
                socket_connect_timeout=5,
                health_check_interval=30,
                # Short in-client retries: the outer loop (``_process``) owns the long wait.
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            )
        client = self._client = self._make_client()
        acks = ManualAcks(client)
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        try:
            while True:
                self._queue.discard()
                try:
                    async with client:
                        await client.subscribe([(f, 1) for f in self.topic_filters])
                        backoff.reset()
                        self.subscribed.set()
                        host, port = self.settings.broker_host_port
                        log.info(
                            "ingest_subscribed",
                            broker=f"{host}:{port}",
                            client_id=self.client_id,
                            filters=",".join(self.topic_filters),
                            manual_ack=acks.enabled,
                            concurrency=self.concurrency,
                            partition=str(self.partition),
                        )
                        await self._serve(client, acks)
                except aiomqtt.MqttError as exc:
                    self.subscribed.clear()
                    delay = backoff.next_delay()
                    log.warning("broker_unavailable", error=str(exc), retry_in_s=round(delay, 1))
                    await asyncio.sleep(delay)
        finally:
            self.subscribed.clear()
            log.info("ingest_stopped", counters=dict(self.counters))
            if self._owns_redis and self._ledger.client is not None:
                await self._ledger.client.aclose()
                self._ledger.client = None

    async def _serve(self, client: aiomqtt.Client, acks: ManualAcks) -> None:
        """Hand every message of this connection to an :class:`InOrder` until the connection
        is lost (``MqttError``) or the task cancelled."""
        in_order = InOrder(self.concurrency, self._process, acks.ack)
        owns = self.partition.owns
        try:
            async for message in client.messages:
                key = order_key(str(message.topic))
                if owns(key):
                    await in_order.submit(key, message)
                else:
                    in_order.skip(message)
                    self.counters["partition_skipped"] += 1
        finally:
            await in_order.close()

    def _make_client(self) -> aiomqtt.Client:
        host, port = self.settings.broker_host_port
        username, password = self.settings.broker_credentials
        return aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            identifier=self.client_id,
            clean_session=False,
            keepalive=30,
            timeout=10.0,
            tls_context=self.settings.mqtt_tls_context(),
            # aiomqtt calls this with maxsize=...: one queue, kept across reconnects.
            queue_type=lambda maxsize=0: self._queue,  # type: ignore[arg-type]
        )

    async def _publish_command(self, topic: str, payload: bytes) -> bool:
        """Publish a command at QoS 1; false when there is no MQTT client yet."""
        if self._client is None:
            return False
        await self._client.publish(topic, payload, qos=1, timeout=PUBLISH_TIMEOUT_S)
        return True

    # -- one message ----------------------------------------------------------------------------

    async def _process(self, message: aiomqtt.Message) -> None:
        """Handle one message (its acknowledgement is :class:`InOrder`'s); never raises
        (except on cancellation)."""
        topic = str(message.topic)
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        while True:
            try:
                await self.handle(topic, bytes(payload), retained=message.retain)
                break
            except TRANSIENT_REDIS_ERRORS as exc:
                # Not acknowledged yet: retried here, or redelivered to whoever holds this
                # client id next if this process stops meanwhile.
                delay = backoff.next_delay()
                self.counters["redis_retries"] += 1
                if (skipped := self._throttle.allow("redis_unavailable")) is not None:
                    log.warning(
                        "redis_unavailable",
                        error=str(exc),
                        topic=topic[:200],
                        retry_in_s=round(delay, 2),
                        suppressed=skipped,
                    )
                await asyncio.sleep(delay)
            except Exception:
                self.counters["rejected_internal"] += 1
                if (skipped := self._throttle.allow("internal")) is not None:
                    log.exception(
                        "message_rejected", reason="internal", topic=topic[:200], suppressed=skipped
                    )
                with contextlib.suppress(Exception):
                    await self.redis.hincrby(keys.INGEST_COUNTERS, "rejected_internal", 1)
                break
        self.counters["handled"] += 1

    async def handle(self, topic_name: str, payload: bytes, *, retained: bool = False) -> None:
        """Validate and store one message; a rejection is counted and logged. Raises only
        Redis errors (the caller retries) and bugs."""
        await self._handlers.handle(topic_name, payload, retained)


async def main(
    settings: Settings,
    *,
    group: str = "farm-ingest",
    share: bool = False,
    client_id: str | None = None,
    instance: int = 0,
    metrics_port: int | None = None,
    metrics_addr: str = DEFAULT_ADDR,
    metrics_access: MetricsAccess | None = None,
    concurrency: int = MAX_IN_FLIGHT,
    partition: str | None = None,
) -> int:
    """``farm controller ingest``: serve until SIGINT or SIGTERM; the exit status.

    ``instance`` tells apart several ingest processes on one host (each needs its own stable
    client id); ``client_id`` overrides the id altogether. With ``metrics_port``, the
    process's counters and latency histogram are served on ``metrics_addr:metrics_port``,
    protected as ``metrics_access`` says.
    ``concurrency``: messages handled at once (:data:`MAX_IN_FLIGHT`); ``partition``:
    ``INDEX/COUNT``, this process's share of the messages (see :class:`Ingest`)."""
    try:
        settings.mqtt_tls_context()  # a TLS file that cannot be used: stop now, naming it
        ingest = Ingest(
            settings,
            group=group,
            share=share,
            client_id=client_id,
            instance=instance,
            concurrency=concurrency,
            partition=Partition.parse(partition) if partition else None,
        )
    except ValueError as exc:
        log.error("ingest_config_error", error=str(exc))
        return 2
    if metrics_port is not None:
        try:
            port = ingest.metrics.serve(metrics_port, metrics_addr, metrics_access)
        except ValueError as exc:
            log.error("ingest_config_error", error=str(exc))
            return 2
        except OSError as exc:
            log.error("ingest_metrics_bind_failed", port=metrics_port, error=str(exc))
            return 2
        log.info("ingest_metrics_serving", addr=metrics_addr, port=port)
    loop = asyncio.get_running_loop()
    task = loop.create_task(ingest.run(), name="ingest")
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
            handled.append(sig)
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # main itself was cancelled, not stopped by a signal
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ingest.metrics.close()
    return 0
