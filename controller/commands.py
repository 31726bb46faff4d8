"""Sending an agent a command from a synchronous controller process (a run job, a client
command): one short-lived MQTT connection per command, QoS 1, TLS as the settings say."""

from __future__ import annotations

import asyncio
import time

import aiomqtt

from controller.settings import Settings, redacted
from farm.mqtt_tls import TlsError


class BrokerUnavailable(Exception):
    """A command could not be published (the message names the broker, password masked)."""


def publish_command(settings: Settings, topic: str, payload: bytes, name: str) -> None:
    """Publish ``payload`` on ``topic`` at QoS 1 (``BrokerUnavailable`` if the broker cannot
    take it); ``name`` makes the client id (``farm-<name>-<n>``) tell who sent it."""
    host, port = settings.broker_host_port
    user, password = settings.broker_credentials
    client_id = f"farm-{name}-{time.monotonic_ns() % 10**6}"

    async def send() -> None:
        async with aiomqtt.Client(
            host,
            port,
            username=user,
            password=password,
            identifier=client_id,
            timeout=10,
            tls_context=tls,
        ) as client:
            await client.publish(topic, payload, qos=1)

    try:
        # Built per command: a TLS file replaced on disk (a renewed certificate) is read.
        tls = settings.mqtt_tls_context()
        asyncio.run(send())
    except (aiomqtt.MqttError, OSError, TlsError) as exc:
        raise BrokerUnavailable(f"broker {redacted(settings.broker_url)}: {exc}") from None
