"""The shipped broker files (deploy/mosquitto/mosquitto.conf and acl) against a real mosquitto.

The broker runs from the shipped config with only the listener's port and the file paths
changed (tests/integration/deploy_broker.py); the ACL is the shipped file itself, unchanged.
The password file comes from ``mosquitto_passwd`` (and, in one test, from ``farm broker``).
Every client, agents and controller alike, connects over TLS: the shipped config has no plain
listener. The client-certificate variant turns on the config's commented lines.

Over MQTT 3.1.1 a publish the ACL denies is acknowledged and dropped, so every "refused" is
shown by a subscriber that must not receive it: each check ends with a sentinel published
after the forbidden messages, and the forbidden ones had to arrive before it if at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from typer.testing import CliRunner

from controller.broker_cli import broker_app
from farm.mqtt_tls import ClientTls
from tests.integration.deploy_broker import (
    CLIENT_CERTIFICATES,
    CONTROLLER,
    PI1,
    PI2,
    SHIPPED_ACL,
    SHIPPED_CONF,
    Broker,
    add_users,
    shipped_broker,
)
from tests.integration.farm_procs import wait_until
from tests.tls_certs import Pki


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """The shipped config and ACL, with the controller's user and two agents."""
    server = shipped_broker(tmp_path)
    try:
        yield server
    finally:
        server.stop()


# -- receiving ----------------------------------------------------------------------------------


@dataclass
class Inbox:
    """What one connected client received."""

    client: aiomqtt.Client
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.messages]

    def payloads(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in self.messages if t == topic]

    def has(self, topic: str, payload: bytes) -> bool:
        return payload in self.payloads(topic)


@contextlib.asynccontextmanager
async def receiving(client: aiomqtt.Client, *filters: str) -> AsyncIterator[Inbox]:
    """Connect ``client``, subscribe to ``filters`` (QoS 1) and collect what arrives."""
    async with client:
        inbox = Inbox(client)

        async def collect() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                inbox.messages.append((str(message.topic), payload, message.retain))

        task = asyncio.get_running_loop().create_task(collect())
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)
        try:
            yield inbox
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish(
    client: aiomqtt.Client, topic: str, payload: bytes, *, retain: bool = False
) -> None:
    async with client:
        await client.publish(topic, payload, qos=1, retain=retain)


# -- the shipped files themselves ---------------------------------------------------------------


def shipped_options() -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in SHIPPED_CONF.read_text().splitlines():
        words = line.split(None, 1)
        if words and not words[0].startswith("#"):
            options.setdefault(words[0], []).append(words[1] if len(words) > 1 else "")
    return options


def test_the_shipped_config_raises_the_queue_limits_and_requires_passwords() -> None:
    options = shipped_options()
    # The default 1000 drops QoS 1 messages silently under load
    # (docs/architecture.md#platform-notes).
    assert int(options["max_queued_messages"][0]) >= 100_000
    assert int(options["max_inflight_messages"][0]) >= 20
    assert options["allow_anonymous"] == ["false"]
    assert options.get("per_listener_settings", ["false"]) == ["false"]  # one ACL for all
    assert options["persistence"] == ["true"]
    assert {"password_file", "acl_file"} <= set(options)
    # The ACL confines agents with the %u patterns and names the controller's user.
    acl = SHIPPED_ACL.read_text().splitlines()
    assert "pattern write farm/v1/agent/%u/#" in acl
    assert "pattern read farm/v1/cmd/%u/#" in acl
    controller = acl[acl.index(f"user {CONTROLLER}") + 1 :]
    block = controller[: next((i for i, x in enumerate(controller) if x.startswith("user ")), None)]
    assert {"topic read farm/v1/agent/#", "topic write farm/v1/cmd/#"} <= set(block)


# -- against the broker -------------------------------------------------------------------------


def test_the_shipped_config_has_one_listener_and_it_is_tls() -> None:
    """No plain listener: none would accept an agent's (or the controller's) password in
    clear text. The client-certificate lines are there, commented, for labs to turn on."""
    listeners: list[list[str]] = []
    for line in SHIPPED_CONF.read_text().splitlines():
        words = line.split()
        if words and words[0] == "listener":
            listeners.append([])
        elif words and listeners:
            listeners[-1].append(words[0])
    assert len(listeners) == 1
    assert {"certfile", "keyfile"} <= set(listeners[0])
    for option in CLIENT_CERTIFICATES:
        assert f"#{option}" in listeners[0]


async def test_anonymous_and_wrong_passwords_are_refused(broker: Broker) -> None:
    for user, password in ((None, None), (PI1, "wrong"), ("nobody", "x")):
        with pytest.raises(aiomqtt.MqttError, match=r"(?i)not authori[sz]ed|bad user"):
            async with broker.client(user, password=password):
                pass
    async with broker.agent(PI1), broker.client(CONTROLLER):
        pass  # the right passwords get in


async def test_an_agents_password_over_plain_tcp_gets_nowhere(broker: Broker) -> None:
    """The right user and password, sent without TLS (as a misconfigured Pi or a controller
    with mqtt:// would): the broker never accepts the connection, and logs no login."""
    for user in (PI1, CONTROLLER):
        with pytest.raises(aiomqtt.MqttError):
            async with broker.client(user, tls=False):
                pass
    async with broker.agent(PI1):
        pass  # over TLS it gets in
    broker.stop()  # mosquitto's log (its stdout) is complete once it exits
    log = broker.log.read_text()
    assert log.count("SSL routines::wrong version number") == 2
    assert log.count(f"u'{PI1}'") == 1 and f"u'{CONTROLLER}'" not in log


# -- client certificates (the shipped config's commented variant) -----------------------------


@pytest.fixture
def cert_broker(tmp_path: Path) -> Iterator[Broker]:
    """The shipped config with ``cafile`` and ``require_certificate true`` turned on."""
    server = shipped_broker(tmp_path, enable=CLIENT_CERTIFICATES)
    try:
        yield server
    finally:
        server.stop()


async def test_with_client_certificates_a_client_needs_one_signed_by_the_lab_ca(
    cert_broker: Broker, tmp_path: Path
) -> None:
    # The right password, no certificate: the TLS handshake fails.
    with pytest.raises(aiomqtt.MqttError):
        async with cert_broker.agent(PI1, certificate=False):
            pass
    # A certificate from another CA (a self-made one): refused the same way.
    other = Pki.create(tmp_path / "other-ca")
    cert, key = other.client(PI1)
    forged = aiomqtt.Client(
        "127.0.0.1",
        cert_broker.port,
        username=PI1,
        password=cert_broker.passwords[PI1],
        tls_context=ClientTls(cert_broker.ca, cert, key).context(),
        timeout=5,
    )
    with pytest.raises(aiomqtt.MqttError):
        async with forged:
            pass
    # A certificate of the lab CA still needs the password: the ACL keys on the user.
    with pytest.raises(aiomqtt.MqttError, match=r"(?i)not authori[sz]ed|bad user"):
        async with cert_broker.agent(PI1, password="wrong"):
            pass
    # Certificate and password: in, and the ACL applies as without certificates.
    status = f"farm/v1/agent/{PI1}/status"
    async with (
        receiving(cert_broker.client(CONTROLLER), "farm/v1/agent/#") as controller,
        cert_broker.agent(PI1) as pi1,
    ):
        await pi1.publish(f"farm/v1/agent/{PI2}/status", b"forged", qos=1)
        await pi1.publish(status, b"online", qos=1)
        await wait_until(lambda: controller.has(status, b"online"), 30, "the agent's status")
        assert controller.topics() == [status]


async def test_the_certificates_common_name_can_replace_the_password(tmp_path: Path) -> None:
    """``use_identity_as_username true`` as well: a client sends no user name or password,
    its certificate's common name is the user the ACL sees."""
    server = shipped_broker(tmp_path, enable=(*CLIENT_CERTIFICATES, "use_identity_as_username"))

    def by_certificate(user: str) -> aiomqtt.Client:
        cert, key = server.pki.client(user)
        context = ClientTls(server.ca, cert, key).context()
        return aiomqtt.Client("127.0.0.1", server.port, tls_context=context, timeout=5)

    status = f"farm/v1/agent/{PI1}/status"
    try:
        async with (
            receiving(by_certificate(CONTROLLER), "farm/v1/agent/#") as controller,
            by_certificate(PI1) as pi1,
        ):
            await pi1.publish(f"farm/v1/agent/{PI2}/status", b"forged", qos=1)
            await pi1.publish(status, b"online", qos=1)
            await wait_until(lambda: controller.has(status, b"online"), 30, "the agent's status")
            assert controller.topics() == [status]
        with pytest.raises(aiomqtt.MqttError):
            async with server.client(PI1, certificate=False):
                pass
    finally:
        server.stop()


async def test_an_agent_publishes_under_its_prefix_and_gets_its_commands(broker: Broker) -> None:
    status = f"farm/v1/agent/{PI1}/status"
    samples = f"farm/v1/agent/{PI1}/board/b1/run/r1/samples"
    # A power trace chunk, as large as one gets (farm.messages.TRACE_CHUNK_VALUES doubles).
    trace, chunk = f"farm/v1/agent/{PI1}/board/b1/run/r1/trace", b"[" + b"9" * 1_700_000 + b"]"
    async with (
        receiving(broker.client(CONTROLLER), "farm/v1/agent/#") as plain,
        receiving(broker.client(CONTROLLER), "$share/farm-ingest/farm/v1/agent/#") as shared,
        receiving(broker.agent(PI1), f"farm/v1/cmd/{PI1}") as agent,
    ):
        await agent.client.publish(status, b"online", qos=1, retain=True)
        await agent.client.publish(samples, b"batch-1", qos=1)
        await agent.client.publish(trace, chunk, qos=1)
        await agent.client.publish(f"farm/v1/agent/{PI1}/heartbeat", b"beat", qos=0)
        for inbox in (plain, shared):
            await wait_until(
                lambda inbox=inbox: (
                    inbox.has(samples, b"batch-1")
                    and inbox.has(trace, chunk)
                    and inbox.has(status, b"online")
                ),
                30,
                "the agent's messages at the controller",
            )
        await plain.client.publish(f"farm/v1/cmd/{PI1}", b"run r2", qos=1)
        await wait_until(lambda: agent.has(f"farm/v1/cmd/{PI1}", b"run r2"), 30, "the command")
    # The retained status is there for a controller that subscribes later.
    async with receiving(broker.client(CONTROLLER), "farm/v1/agent/+/status") as later:
        await wait_until(lambda: later.has(status, b"online"), 30, "the retained status")


async def test_an_agent_cannot_publish_as_another_agent_nor_send_commands(broker: Broker) -> None:
    forged = {
        f"farm/v1/agent/{PI2}/status": b"forged-status",
        f"farm/v1/agent/{PI2}/board/b1/run/r1/samples": b"forged-samples",
        f"farm/v1/agent/{PI2}/board/b1/run/r1/trace": b"forged-trace",
        f"farm/v1/agent/{PI2}/events": b"forged-ack",
        f"farm/v1/cmd/{PI2}": b"forged-command",
        f"farm/v1/cmd/{PI1}": b"self-command",  # an agent reads its commands, never writes them
        "farm/v1/agent": b"root",
        "farm/v1/other": b"elsewhere",
    }
    sentinel = f"farm/v1/agent/{PI1}/heartbeat"
    async with (
        receiving(broker.client(CONTROLLER), "farm/v1/agent/#") as controller,
        receiving(broker.agent(PI2), f"farm/v1/cmd/{PI2}") as pi2,
        receiving(broker.agent(PI1), f"farm/v1/cmd/{PI1}") as pi1,
    ):
        for topic, payload in forged.items():
            await pi1.client.publish(topic, payload, qos=1, retain=topic.endswith("status"))
        await pi1.client.publish(sentinel, b"sentinel", qos=1)
        await controller.client.publish(f"farm/v1/cmd/{PI2}", b"sentinel", qos=1)
        await controller.client.publish(f"farm/v1/cmd/{PI1}", b"sentinel", qos=1)
        await wait_until(lambda: controller.has(sentinel, b"sentinel"), 30, "the sentinel")
        await wait_until(lambda: pi2.payloads(f"farm/v1/cmd/{PI2}") == [b"sentinel"], 30, "pi2")
        await wait_until(lambda: pi1.payloads(f"farm/v1/cmd/{PI1}") == [b"sentinel"], 30, "pi1")
        await asyncio.sleep(0.2)
        assert controller.topics() == [sentinel]
        assert pi2.topics() == [f"farm/v1/cmd/{PI2}"]
        assert pi1.topics() == [f"farm/v1/cmd/{PI1}"]
    # Nothing forged was retained either.
    async with receiving(broker.client(CONTROLLER), "farm/v1/agent/#") as later:
        await asyncio.sleep(0.5)
        assert later.messages == []


async def test_an_agents_last_will_counts_only_under_its_own_prefix(broker: Broker) -> None:
    """A will is checked like a publish when the broker sends it: a Pi that dies marks
    itself offline, but cannot have the broker mark another agent offline."""
    own, other = f"farm/v1/agent/{PI1}/status", f"farm/v1/agent/{PI2}/status"
    async with receiving(broker.client(CONTROLLER), "farm/v1/agent/+/status") as controller:
        wills = []
        for topic in (other, own):
            # mosquitto_sub, killed: the connection drops without a DISCONNECT.
            process = await asyncio.create_subprocess_exec(
                *("mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port)),
                *("--cafile", str(broker.ca), "-u", PI1, "-P", broker.passwords[PI1]),
                *("-t", f"farm/v1/cmd/{PI1}", "--will-topic", topic),
                *("--will-payload", "offline", "--will-qos", "1"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wills.append(process)
        await asyncio.sleep(0.5)  # both connected
        for process in wills:
            assert process.returncode is None, "mosquitto_sub could not connect"
            process.kill()
            await process.wait()
        await wait_until(lambda: controller.has(own, b"offline"), 30, "the agent's own will")
        await asyncio.sleep(0.3)
        assert controller.payloads(other) == []


async def test_an_agent_reads_only_its_own_commands(broker: Broker) -> None:
    """Mosquitto accepts any subscription and checks each message when delivering it: an
    agent subscribed to everything still receives only its own commands."""
    async with receiving(broker.agent(PI2), f"farm/v1/cmd/{PI2}") as pi2:
        await pi2.client.publish(f"farm/v1/agent/{PI2}/status", b"retained", qos=1, retain=True)
        spying = (
            f"farm/v1/cmd/{PI2}",
            "farm/v1/cmd/#",
            "farm/v1/agent/#",
            "#",
            "$SYS/#",
            "$share/spies/farm/v1/agent/#",
            "$share/spies/farm/v1/cmd/#",
        )
        async with (
            receiving(broker.agent(PI1), f"farm/v1/cmd/{PI1}", *spying) as pi1,
            broker.client(CONTROLLER) as controller,
        ):
            await controller.publish(f"farm/v1/cmd/{PI2}", b"for-pi2", qos=1)
            await pi2.client.publish(f"farm/v1/agent/{PI2}/board/b/run/r/samples", b"s", qos=1)
            await controller.publish(f"farm/v1/cmd/{PI1}", b"for-pi1", qos=1)
            await wait_until(lambda: pi1.has(f"farm/v1/cmd/{PI1}", b"for-pi1"), 30, "pi1's own")
            await wait_until(lambda: pi2.has(f"farm/v1/cmd/{PI2}", b"for-pi2"), 30, "pi2's own")
            await asyncio.sleep(0.3)
            assert set(pi1.topics()) == {f"farm/v1/cmd/{PI1}"}
            assert b"for-pi2" not in {payload for _, payload, _ in pi1.messages}


async def test_the_controller_reads_everything_through_a_shared_subscription(
    broker: Broker,
) -> None:
    """Two ingest processes in the share group split the agents' messages between them and
    together get every one; the run jobs' commands reach each agent."""
    group = "$share/farm-ingest/farm/v1/agent/#"
    count = 20
    async with (
        receiving(broker.client(CONTROLLER), group) as ingest1,
        receiving(broker.client(CONTROLLER), group) as ingest2,
        receiving(broker.agent(PI1), f"farm/v1/cmd/{PI1}") as pi1,
        receiving(broker.agent(PI2), f"farm/v1/cmd/{PI2}") as pi2,
    ):
        for seq in range(count):
            agent = pi1 if seq % 2 else pi2
            name = PI1 if seq % 2 else PI2
            topic = f"farm/v1/agent/{name}/board/b/run/r/samples"
            await agent.client.publish(topic, str(seq).encode(), qos=1)

        def received() -> list[bytes]:
            return [p for _, p, _ in ingest1.messages + ingest2.messages]

        await wait_until(lambda: len(received()) >= count, 5, "every sample at ingest")
        await asyncio.sleep(0.2)
        assert sorted(received(), key=int) == [str(seq).encode() for seq in range(count)]
        assert ingest1.messages and ingest2.messages  # split between the members
        async with broker.client(CONTROLLER) as job:
            await job.publish(f"farm/v1/cmd/{PI1}", b"c1", qos=1)
            await job.publish(f"farm/v1/cmd/{PI2}", b"c2", qos=1)
        await wait_until(lambda: pi1.messages and pi2.messages, 30, "the commands")


async def test_any_user_can_join_a_share_group_so_the_stack_ingests_plainly(
    broker: Broker,
) -> None:
    """Why deploy/ runs ingest with --no-share: the ACL cannot refuse a subscription, and a
    message mosquitto 2.0 hands to a share-group member that may not read it is dropped, not
    given to another member. An agent joining the controller's group makes ingest lose
    messages; a plain subscription loses none whatever other clients subscribe to."""
    group = "$share/farm-ingest/farm/v1/agent/#"
    topic = f"farm/v1/agent/{PI1}/board/b/run/r/samples"
    count = 10
    async with (
        receiving(broker.client(CONTROLLER), group) as shared_ingest,
        receiving(broker.client(CONTROLLER), "farm/v1/agent/#") as plain_ingest,
        receiving(broker.agent(PI2), group, "farm/v1/agent/#") as intruder,
        broker.agent(PI1) as pi1,
    ):
        for seq in range(count):
            await pi1.publish(topic, str(seq).encode(), qos=1)
        await wait_until(lambda: len(plain_ingest.messages) == count, 30, "the plain ingest")
        await asyncio.sleep(0.3)
        assert intruder.messages == []  # it may read none of them...
        assert 0 < len(shared_ingest.messages) < count  # ...yet took its share away


async def test_farm_broker_adds_and_removes_agents_on_a_running_broker(tmp_path: Path) -> None:
    """`farm broker` on a copy of the shipped ACL and a mosquitto_passwd-made password file;
    the broker applies each change on SIGHUP."""
    directory = tmp_path / "mosquitto"
    directory.mkdir()
    shutil.copy(SHIPPED_ACL, directory / "acl")
    controller_password = "from-mosquitto-passwd"
    add_users(directory / "passwd", {CONTROLLER: controller_password})
    runner = CliRunner()

    def farm_broker(*args: str, stdin: str | None = None) -> str:
        result = runner.invoke(broker_app, [*args, "--dir", str(directory)], input=stdin)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    # lab-pi-03 by the convention (user = agent id): a generated password, on stdout.
    pi3_password = farm_broker("add-agent", "lab-pi-03")
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", pi3_password)
    # lab-pi-04 under another user name: a block of its own in the ACL.
    farm_broker(
        "add-agent",
        "lab-pi-04",
        "--user",
        "agent-lab-pi-04",
        "--password-stdin",
        stdin="pi4-secret\n",
    )
    acl = (directory / "acl").read_text()
    assert acl.startswith(SHIPPED_ACL.read_text())
    assert "user agent-lab-pi-04\ntopic write farm/v1/agent/lab-pi-04/#\n" in acl
    assert farm_broker("list").splitlines() == [
        "agent-lab-pi-04\tagent lab-pi-04",
        f"{CONTROLLER}\tcontroller/operator (ACL user block)",
        "lab-pi-03\tagent lab-pi-03",
    ]
    refused = runner.invoke(broker_app, ["add-agent", "lab-pi-03", "--dir", str(directory)])
    assert refused.exit_code == 2 and "already exists" in refused.output

    server = Broker(
        tmp_path / "broker",
        acl=directory / "acl",
        passwd=directory / "passwd",
        passwords={
            CONTROLLER: controller_password,
            "lab-pi-03": pi3_password,
            "agent-lab-pi-04": "pi4-secret",
        },
    )
    server.start()
    try:
        async with receiving(server.client(CONTROLLER), "farm/v1/agent/#") as controller:
            await publish(server.agent("lab-pi-03"), "farm/v1/agent/lab-pi-03/status", b"3")
            await publish(server.agent("agent-lab-pi-04"), "farm/v1/agent/lab-pi-04/status", b"4")
            # The mapped user may not publish as the other agent.
            await publish(server.agent("agent-lab-pi-04"), "farm/v1/agent/lab-pi-03/status", b"x")
            await publish(server.agent("lab-pi-03"), "farm/v1/agent/lab-pi-03/heartbeat", b"end")
            await wait_until(
                lambda: controller.has("farm/v1/agent/lab-pi-03/heartbeat", b"end"), 30, "end"
            )
            assert controller.payloads("farm/v1/agent/lab-pi-03/status") == [b"3"]
            assert controller.payloads("farm/v1/agent/lab-pi-04/status") == [b"4"]
        async with receiving(server.agent("agent-lab-pi-04"), "farm/v1/cmd/lab-pi-04") as pi4:
            await publish(server.client(CONTROLLER), "farm/v1/cmd/lab-pi-04", b"run")
            await wait_until(lambda: pi4.has("farm/v1/cmd/lab-pi-04", b"run"), 30, "pi4's cmd")

        # Added while the broker runs: in effect after SIGHUP.
        pi5_password = farm_broker("add-agent", "lab-pi-05")
        server.passwords["lab-pi-05"] = pi5_password
        server.reload()
        await wait_until(lambda: _connects(server, "lab-pi-05"), 30, "lab-pi-05 after reload")

        farm_broker("remove-agent", "lab-pi-04")
        farm_broker("remove-agent", "lab-pi-03")
        assert (directory / "acl").read_text() == SHIPPED_ACL.read_text()
        server.reload()
        await wait_until(lambda: not _connects(server, "lab-pi-03"), 30, "lab-pi-03 refused")
        assert not _connects(server, "agent-lab-pi-04")
        assert _connects(server, CONTROLLER)  # the mosquitto_passwd entry is untouched
    finally:
        server.stop()


def _connects(server: Broker, user: str) -> bool:
    """Whether ``user`` can log in now (a blocking check, short)."""
    completed = subprocess.run(
        [
            *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(server.port), "-u", user),
            *("-P", server.passwords[user], "-t", f"farm/v1/agent/{user}/probe", "-n"),
            *("--cafile", str(server.ca)),
        ],
        capture_output=True,
        timeout=10,
    )
    return completed.returncode == 0
