"""The agent's MQTT client: broker URL, credentials, TLS and last will."""

from __future__ import annotations

import aiomqtt

from agent.config import BrokerConfig
from farm.messages import AgentStatus, agent_status_topic
from farm.mqtt_tls import ClientTls

#: aiomqtt warns once per publish above this many calls in flight; the outbox bounds its own
#: window, so the warning would only be noise.
PENDING_CALLS_THRESHOLD = 1000


def offline_will(agent: str, started: float | None = None) -> aiomqtt.Will:
    """The last will: the retained agent status turns ``offline`` when the agent dies.
    ``started`` (the agent process's start) lets a receiver tell this process's statuses from
    a previous one's."""
    payload = AgentStatus(
        agent=agent, state="offline", reason="connection lost", started=started
    ).dumps()
    return aiomqtt.Will(agent_status_topic(agent), payload, qos=1, retain=True)


def make_client(broker: BrokerConfig, agent: str, *, window: int, started: float) -> aiomqtt.Client:
    """A client for ``agent`` with a persistent session (commands sent while it was away are
    delivered when it returns) and its last will. Raises :class:`farm.mqtt_tls.TlsError`
    naming a TLS file that cannot be used."""
    username, password = broker.credentials()
    tls_context = None
    if broker.use_tls:
        tls = broker.tls
        files = ClientTls(tls.ca, tls.cert, tls.key, tls.insecure) if tls else ClientTls()
        tls_context = files.context()
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        username=username,
        password=password,
        identifier=f"farm-agent-{agent}",
        clean_session=False,
        will=offline_will(agent, started),
        keepalive=broker.keepalive_s,
        tls_context=tls_context,
        max_inflight_messages=window,
        timeout=10.0,
    )
    client.pending_calls_threshold = PENDING_CALLS_THRESHOLD
    return client
