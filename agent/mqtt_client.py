"""The agent's MQTT client: broker URL, credentials, TLS and last will."""

from __future__ import annotations

import ssl

import aiomqtt

from agent.config import BrokerConfig
from farm.messages import AgentStatus, agent_status_topic

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
    delivered when it returns) and its last will."""
    username, password = broker.credentials()
    tls_context = None
    if broker.use_tls:
        tls = broker.tls
        tls_context = ssl.create_default_context(cafile=str(tls.ca) if tls and tls.ca else None)
        if tls and tls.cert:
            tls_context.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
        if tls and tls.insecure:
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
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
