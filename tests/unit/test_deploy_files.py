"""The deployment kit (deploy/) is well-formed and agrees with the code: the compose file's
services, every `farm` command line it and the systemd units run (checked against the real
CLI), the units (``systemd-analyze verify`` where it exists), the udev rules, the rq cron
schedule, and ``farm broker``'s password file and ACL handling."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from rq import cron as rq_cron
from typer.testing import CliRunner

from controller import broker_admin
from controller.broker_admin import (
    BrokerFileError,
    BrokerFiles,
    add_agent,
    add_controller,
    check_password,
    hash_password,
    mapped_agents,
    read_users,
    remove_agent,
)
from controller.broker_cli import broker_app
from controller.jobs import NIGHTLY, submit_nightly
from controller.queueing import SERIALIZER
from controller.redis_acl import PASSWORD_ENV, RULES, user_line
from controller.worker_pool import JOB_FUNCTIONS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
SYSTEMD = DEPLOY / "systemd"
SHIPPED_ACL = DEPLOY / "mosquitto" / "acl"
VENV_BIN = "/opt/tinyfarm/venv/bin/"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def units() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer", ".target"))


def unit_sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as sections of (key, value) lines, in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{number}: {raw}"
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"{path.name}:{number}: a setting before any section"
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z]+", key), f"{path.name}:{number}: {raw}"
        assert not value.endswith("\\"), f"{path.name}:{number}: continuation lines"
        sections[current].append((key, value))
    return sections


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in unit_sections(path).get(section, []) if k == key]


def _rq_cron_jobs() -> list[Any]:
    from redis import Redis
    from rq.cron import CronScheduler

    scheduler = CronScheduler(connection=Redis(port=1))  # never connected
    scheduler.load_config_from_file(str(DEPLOY / "rq-cron" / "nightly.py"))
    return scheduler.get_jobs()


# -- docker-compose.yml -------------------------------------------------------------------------


def test_compose_has_the_server_side_services() -> None:
    services = compose()["services"]
    assert {"redis", "mosquitto", "worker", "ingest", "exporter", "prometheus", "grafana"} <= set(
        services
    )
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"  # AOF persistence
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    mosquitto = services["mosquitto"]
    assert "./mosquitto:/mosquitto/config:ro" in mosquitto["volumes"]
    assert mosquitto["command"][-1] == "/mosquitto/config/mosquitto.conf"
    assert mosquitto["ports"] == ["8883:8883"]  # TLS only: no plain MQTT port
    for name in ("worker", "ingest", "exporter"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        env = service["environment"]
        user = "farm-exporter" if name == "exporter" else "farm-controller"
        assert redis_url_user(env["FARM_REDIS_URL"]) == user
        if name == "exporter":
            assert "FARM_MQTT_URL" not in env  # it reads Redis only
            continue
        # The controller's user, which the shipped ACL names, over the TLS listener.
        assert env["FARM_MQTT_URL"].startswith("mqtts://farm-controller:")
        assert env["FARM_MQTT_URL"].endswith("@mosquitto:8883")
        assert {"source": "mqtt-ca", "target": env["FARM_MQTT_CA"]} in service["configs"]
    assert "replicas" in services["worker"]["deploy"]
    # One worker process forks FARM_WORKERS RQ workers (controller/worker_pool.py).
    worker = services["worker"]["command"]
    assert worker[worker.index("--processes") + 1] == "${FARM_WORKERS:-2}"
    ingest = services["ingest"]["command"]
    assert "--no-share" in ingest and "--client-id" in ingest  # README: why one ingest
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert any(v.startswith("./grafana/provisioning:") for v in services["grafana"]["volumes"])
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    assert compose()["configs"]["mqtt-ca"] == {"file": "./mosquitto/certs/ca.crt"}
    # The metrics stay on the compose network.
    assert "ports" not in services["exporter"] and "ports" not in services["ingest"]


def redis_url_user(url: str) -> str:
    """The user of a Redis URL of the deploy kit, which must carry a password variable."""
    match = re.fullmatch(r"rediss?://([a-z-]+):\$\{(FARM_REDIS_[A-Z_]*PASSWORD)[^}]*\}@\S+", url)
    assert match, f"a Redis URL without user and password: {url}"
    return match[1]


def compose_redis_users() -> dict[str, list[str]]:
    """The users the compose file's redis-server is started with: their ACL rules by name."""
    users: dict[str, list[str]] = {}
    words: list[str] | None = None
    for arg in compose()["services"]["redis"]["command"]:
        if arg.startswith("--"):
            words = [] if arg == "--user" else None
            continue
        if words is not None:
            if not words:
                users[arg] = words
            words.append(arg)
    return {user: words[1:] for user, words in users.items()}


def test_compose_redis_has_the_acl_users_and_no_open_door() -> None:
    """The default user is off; each farm user has a password from .env and exactly the
    rules of controller.redis_acl; the healthcheck authenticates."""
    users = compose_redis_users()
    assert users["default"] == ["reset", "off"]
    assert set(users) == {"default", *RULES}
    for user, rules in RULES.items():
        words = users[user]
        variable = PASSWORD_ENV[user]
        assert words[:3] == ["reset", "on", f">${{{variable}:?set {variable} in deploy/.env}}"]
        assert words[3:] == rules.split(), user
        # the same words as the ACL file farm controller redis-acl writes, after the password
        assert user_line(user, "x").split()[5:] == rules.split()
    redis = compose()["services"]["redis"]
    assert "--user farm-exporter" in redis["healthcheck"]["test"][1]
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${FARM_REDIS_EXPORTER_PASSWORD")


def test_every_redis_url_in_the_kit_carries_a_user() -> None:
    """No service or env example reaches Redis without a user and password."""
    found = []
    for service in compose()["services"].values():
        env = service.get("environment") or {}
        if "FARM_REDIS_URL" in env:
            found.append(env["FARM_REDIS_URL"])
        # A URL on a command line is readable by every local user (ps, /proc/*/cmdline).
        assert not any("redis://" in str(arg) for arg in service.get("command") or [])
    assert len(found) >= 4  # worker, ingest, exporter, cron
    for url in found:
        redis_url_user(url)
    for example in sorted(SYSTEMD.glob("*.env.example")):
        for url in re.findall(r"^FARM_REDIS_URL=(\S+)", example.read_text(), re.M):
            assert re.fullmatch(r"rediss?://farm-(controller|exporter):[^@]+@\S+", url), example
            found.append(url)
    assert any("farm-exporter" in url for url in found)


def test_rq_cron_takes_the_redis_url_from_the_environment() -> None:
    """`rq cron` is given the URL as RQ_REDIS_URL, copied from FARM_REDIS_URL by a shell, in
    both schedulers: never as --url, which would put the password on its command line."""
    cron = compose()["services"]["cron"]
    assert cron["command"][:2] == ["sh", "-c"]
    assert cron["command"][2].startswith('RQ_REDIS_URL="$$FARM_REDIS_URL" exec rq cron ')
    (line,) = values(SYSTEMD / "tinyfarm-rq-cron.service", "Service", "ExecStart")
    assert "--url" not in line and 'RQ_REDIS_URL="$$FARM_REDIS_URL" exec ' in line


def test_compose_paths_exist() -> None:
    """Every file the compose file builds from or mounts is in the repository."""
    data = compose()
    assert (DEPLOY / data["services"]["worker"]["build"]["context"] / "deploy/Dockerfile").exists()
    for service in data["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # not a named volume
                assert (DEPLOY / source).exists(), source
    # The scrape targets of the compose stack's Prometheus are its services and ports.
    prometheus = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert '"exporter:9108"' in prometheus and '"ingest:9109"' in prometheus
    exporter = data["services"]["exporter"]["command"]
    assert exporter[exporter.index("--port") + 1] == "9108"
    ingest = data["services"]["ingest"]["command"]
    assert ingest[ingest.index("--metrics-port") + 1] == "9109"


def test_compose_variables_are_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    documented = set(
        re.findall(r"^#?([A-Z_][A-Z0-9_]*)=", (DEPLOY / "env.example").read_text(), re.M)
    )
    assert used <= documented, used - documented


def test_the_dockerfile_installs_the_controller_extra() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)
    assert '".[controller]"' in text
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / source).exists(), source
    assert re.search(r"^USER farm$", text, re.M)


def test_docker_compose_config_validates() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        reason = (version.stderr.strip().splitlines() or ["no output"])[0]
        pytest.skip(f"the docker CLI has no compose plugin ({reason})")
    env = {**os.environ, "FARM_MQTT_PASSWORD": "x", "GRAFANA_ADMIN_PASSWORD": "x"}
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=DEPLOY,
    )
    assert result.returncode == 0, result.stderr


# -- the `farm` command lines -------------------------------------------------------------------


def farm_command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv after `farm`) of every farm invocation in compose, units and rq cron."""
    found: list[tuple[str, list[str]]] = []
    for name, service in compose()["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[0] == "farm":
            # Compose substitutes ${NAME:-default}: the default, as with no .env.
            argv = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(a)) for a in command[1:]]
            found.append((f"docker-compose.yml:{name}", argv))
    for path in units():
        for line in values(path, "Service", "ExecStart"):
            argv = shlex.split(line)
            if argv[0] == VENV_BIN + "farm":
                substituted = [
                    a.replace("${FARM_LOG_LEVEL}", "info")
                    .replace("${FARM_AGENT_CONFIG}", "/etc/tinyfarm/agent.yaml")
                    .replace("${FARM_WORKERS}", "4")
                    .replace("%H", "host")
                    for a in argv[1:]
                ]
                found.append((path.name, substituted))
    found.append(("controller.jobs.NIGHTLY (rq-cron/nightly.py)", list(NIGHTLY)))
    return found


def resolve(argv: list[str]) -> list[str]:
    """Parse ``argv`` with the real `farm` CLI without running it (unknown commands and
    options raise); the command path."""
    from farm.cli import app

    command: Any = typer.main.get_command(app)
    context = command.make_context("farm", list(argv))
    path: list[str] = []
    while hasattr(command, "resolve_command"):
        rest = [*context._protected_args, *context.args]
        if not rest:
            break
        name, command, rest = command.resolve_command(context, rest)
        path.append(name)
        context = command.make_context(name, rest, parent=context)
    return path


@pytest.mark.parametrize(
    "where, argv",
    [pytest.param(w, a, id=f"{w}: farm {shlex.join(a)}") for w, a in farm_command_lines()],
)
def test_farm_command_lines_parse(where: str, argv: list[str]) -> None:
    try:
        path = resolve(argv)
    except Exception as exc:  # click's UsageError, NoSuchOption, BadParameter...
        raise AssertionError(f"{where}: farm {shlex.join(argv)}: {exc}") from exc
    assert path, f"{where}: no command in {argv}"


def test_the_nightly_sweep_is_the_same_command_in_both_schedulers() -> None:
    (timer_line,) = values(SYSTEMD / "tinyfarm-nightly.service", "Service", "ExecStart")
    argv = shlex.split(timer_line)
    assert argv[1:] == [
        *("submit", "--suite", "full", "--boards", "all", "--label", "nightly", "--verdict")
    ]
    assert list(NIGHTLY) == argv[1:]  # what the rq cron job runs


# -- rq cron ------------------------------------------------------------------------------------


def test_rq_cron_enqueues_the_nightly_submit_on_a_controller_queue() -> None:
    from rq.utils import import_attribute

    from controller.sweeps import QUEUE_ORDER

    (job,) = _rq_cron_jobs()
    assert job.cron == "0 1 * * *"
    assert job.queue_name in QUEUE_ORDER  # a queue the workers listen to
    assert import_attribute(job.func_name) is submit_nightly
    assert job.func_name in JOB_FUNCTIONS  # a worker runs it
    assert job.args == () and job.kwargs == {}  # the job chooses no command


def test_rq_cron_enqueues_a_json_job() -> None:
    """RQ's cron enqueues with pickle unless told otherwise; the workers read only JSON."""
    from redis import Redis

    (job,) = _rq_cron_jobs()
    connection = Redis(port=1)  # never connected: the job is made, not saved
    enqueued = rq_cron.Queue(job.queue_name, connection=connection).create_job(job.func)
    assert enqueued.serializer is SERIALIZER
    assert json.loads(enqueued.data)[0] == "controller.jobs.submit_nightly"


# -- systemd ------------------------------------------------------------------------------------


def test_units_have_the_required_settings() -> None:
    names = {p.name for p in units()}
    assert {
        "tinyfarm-agent.service",
        "tinyfarm-worker@.service",
        "tinyfarm-ingest.service",
        "tinyfarm-exporter.service",
        "tinyfarm-nightly.service",
        "tinyfarm-nightly.timer",
    } <= names
    for path in units():
        sections = unit_sections(path)
        assert set(sections) <= {"Unit", "Service", "Timer", "Install"}, path.name
        assert values(path, "Unit", "Description"), path.name
        if path.suffix != ".service":
            continue
        service = dict(sections["Service"])
        assert service["User"] == "tinyfarm" and service["Group"] == "tinyfarm", path.name
        assert service["ExecStart"].startswith("/"), path.name
        assert service.get("EnvironmentFile"), path.name
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "PrivateTmp": "yes",
            "ProtectHome": "yes",
        }.items():
            assert service.get(key) == value, f"{path.name}: {key}"
        if service["Type"] != "oneshot":
            assert service["Restart"] == "on-failure", path.name
    agent = SYSTEMD / "tinyfarm-agent.service"
    assert "dialout" in values(agent, "Service", "SupplementaryGroups")[0].split()
    assert {"char-ttyACM rw", "char-ttyUSB rw"} <= set(values(agent, "Service", "DeviceAllow"))
    assert values(agent, "Service", "ReadWritePaths") == ["/var/lib/tinyfarm"]
    worker = SYSTEMD / "tinyfarm-worker@.service"
    assert values(worker, "Service", "ReadWritePaths")
    # The env file may override the default number of workers the one process forks.
    assert values(worker, "Service", "Environment") == [
        "FARM_WORKERS=4",
        "MPLCONFIGDIR=/var/cache/tinyfarm/matplotlib",
    ]
    assert "tinyfarm/matplotlib" in values(worker, "Service", "CacheDirectory")[0].split()
    assert values(worker, "Service", "ExecStart")[0].endswith("--processes ${FARM_WORKERS}")
    timer = SYSTEMD / "tinyfarm-nightly.timer"
    assert values(timer, "Timer", "OnCalendar") == ["*-*-* 01:00:00"]


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the structural checks above still ran)")
    # verify also checks that ExecStart exists: point the venv paths at this interpreter's.
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "farm").exists() or not (bin_dir / "rq").exists():
        pytest.skip(f"no farm and rq beside {sys.executable} to stand in for {VENV_BIN}")
    for path in units():
        text = path.read_text().replace(VENV_BIN, f"{bin_dir}/")
        (tmp_path / path.name).write_text(text)
    # A template is verified through an instance.
    shutil.copy(tmp_path / "tinyfarm-worker@.service", tmp_path / "tinyfarm-worker@1.service")
    checked = [p.name for p in units() if "@." not in p.name] + ["tinyfarm-worker@1.service"]
    for name in checked:
        result = subprocess.run(
            [analyze, "verify", "--man=no", f"./{name}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert result.returncode == 0 and not result.stderr.strip(), f"{name}: {result.stderr}"


# -- udev ---------------------------------------------------------------------------------------

UDEV_TOKEN = re.compile(
    r'\s*(?P<key>[A-Z_]+)(\{(?P<attr>[A-Za-z0-9_]+)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"\s*'
)
MATCH_KEYS = {"SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "ATTR", "ATTRS", "ENV", "ACTION", "DRIVERS"}
ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE", "OWNER", "ENV", "TAG"}


def test_udev_rules_are_well_formed() -> None:
    rules = (DEPLOY / "udev" / "99-tinyfarm.rules").read_text()
    ids = set()
    for number, line in enumerate(rules.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split(",")
        parsed = [UDEV_TOKEN.fullmatch(t) for t in tokens]
        assert all(parsed), f"line {number}: {line}"
        matches = {}
        for m in parsed:
            assert m is not None
            if m["op"] in ("==", "!="):
                assert m["key"] in MATCH_KEYS, f"line {number}: {m['key']}"
                matches[(m["key"], m["attr"])] = m["value"]
            else:
                assert m["key"] in ASSIGN_KEYS, f"line {number}: {m['key']}"
                if m["key"] == "MODE":
                    assert re.fullmatch(r"0[0-7]{3}", m["value"])
                if m["key"] == "SYMLINK":
                    assert m["value"].startswith("tinyfarm/")
        attr = "ATTRS" if ("ATTRS", "idVendor") in matches else "ATTR"
        vid, pid = matches[(attr, "idVendor")], matches[(attr, "idProduct")]
        # sysfs gives lower-case hex; udev compares exactly.
        assert re.fullmatch(r"[0-9a-f]{4}", vid) and re.fullmatch(r"[0-9a-f]{4}", pid)
        if matches[("SUBSYSTEM", None)] == "tty":
            assert matches[("ATTRS", "serial")], f"line {number}: a tty rule names a serial"
        ids.add(f"{vid}:{pid}")
    assert {"0483:374b", "0483:374e", "0483:5740"} <= ids  # ST-LINK, STLINK-V3, LPM01A


# -- farm broker --------------------------------------------------------------------------------

# A line mosquitto_passwd 2.0.11 wrote for user "ctl" with password "c".
MOSQUITTO_PASSWD_LINE = (
    "ctl:$7$101$TeQQWu7iCBgrQv8s$Lho/uBq3F0AeeUfYVllZ28sCGyk1T6KeOXFtEcyBWXmh25/j+Vl4ckk6"
    "iaN+t67g5gWPmAkQImbaTb2KOj4pBQ=="
)


def test_password_hashes_are_mosquittos() -> None:
    stored = MOSQUITTO_PASSWD_LINE.partition(":")[2]
    assert check_password("c", stored) and not check_password("d", stored)
    salt = base64.b64decode("TeQQWu7iCBgrQv8s")
    assert hash_password("c", iterations=101, salt=salt) == stored
    made = hash_password("secret")
    assert re.fullmatch(r"\$7\$10000\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", made)
    assert check_password("secret", made)


@pytest.fixture
def files(tmp_path: Path) -> BrokerFiles:
    shutil.copy(SHIPPED_ACL, tmp_path / "acl")
    (tmp_path / "passwd").write_text(MOSQUITTO_PASSWD_LINE + "\n")
    os.chmod(tmp_path / "passwd", 0o640)
    return BrokerFiles(tmp_path)


def test_add_and_remove_agents(files: BrokerFiles) -> None:
    assert add_agent(files, "lab-pi-01", "p1", iterations=1) == "lab-pi-01"
    assert files.acl.read_text() == SHIPPED_ACL.read_text()  # the %u patterns cover it
    assert add_agent(files, "lab-pi-02", "p2", user="agent-lab-pi-02", iterations=1) == (
        "agent-lab-pi-02"
    )
    assert mapped_agents(files.acl.read_text()) == {"lab-pi-02": "agent-lab-pi-02"}
    users = read_users(files.passwd)
    assert set(users) == {"ctl", "lab-pi-01", "agent-lab-pi-02"}
    assert check_password("p2", users["agent-lab-pi-02"])
    assert MOSQUITTO_PASSWD_LINE in files.passwd.read_text().splitlines()  # untouched
    assert stat.S_IMODE(files.passwd.stat().st_mode) == 0o640  # kept
    # Re-keying needs --force.
    with pytest.raises(BrokerFileError, match="already exists"):
        add_agent(files, "lab-pi-01", "again")
    add_agent(files, "lab-pi-01", "again", force=True, iterations=1)
    assert check_password("again", read_users(files.passwd)["lab-pi-01"])
    add_agent(files, "lab-pi-02", "p2b", user="agent-lab-pi-02", force=True, iterations=1)
    assert files.acl.read_text().count("\nuser agent-lab-pi-02\n") == 1

    assert remove_agent(files, "lab-pi-02") == "agent-lab-pi-02"
    assert remove_agent(files, "lab-pi-01") == "lab-pi-01"
    assert files.acl.read_text() == SHIPPED_ACL.read_text()
    assert set(read_users(files.passwd)) == {"ctl"}
    with pytest.raises(BrokerFileError, match="no agent"):
        remove_agent(files, "lab-pi-01")


@pytest.mark.parametrize(
    "agent, user, message",
    [
        ("farm-controller", None, "reserved"),
        ("lab-pi-09", "farm-admin", "reserved"),
        ("lab/pi", None, "agent id"),
        ("lab:pi", None, "contains ':'"),
        ("lab-pi-09", "bad:user", "user name"),
        ("ctl", "agent-ctl", "may publish as that agent"),  # a user named like the agent
        ("lab-pi-09", "ctl", "belongs to agent"),
    ],
)
def test_add_agent_refuses(files: BrokerFiles, agent: str, user: str | None, message: str) -> None:
    with pytest.raises(BrokerFileError, match=message):
        add_agent(files, agent, "pw", user=user, force=True, iterations=1)


def test_a_user_name_cannot_serve_two_agents(files: BrokerFiles) -> None:
    add_agent(files, "lab-pi-03", "pw", user="pi-user", iterations=1)
    with pytest.raises(BrokerFileError, match="belongs to agent 'lab-pi-03'"):
        add_agent(files, "lab-pi-04", "pw", user="pi-user", force=True, iterations=1)
    with pytest.raises(BrokerFileError, match="has MQTT user 'pi-user'"):
        add_agent(files, "lab-pi-03", "pw", iterations=1)
    with pytest.raises(BrokerFileError, match="remove-agent lab-pi-03"):
        remove_agent(files, "pi-user")


def test_add_controller_needs_the_acls_user_block(files: BrokerFiles) -> None:
    add_controller(files, "pw", iterations=1)
    assert check_password("pw", read_users(files.passwd)["farm-controller"])
    with pytest.raises(BrokerFileError, match="no `user someone` block"):
        add_controller(files, "pw", user="someone")


def test_a_new_password_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_admin, "_default_owner", lambda: None)
    shutil.copy(SHIPPED_ACL, tmp_path / "acl")
    runner = CliRunner()
    secret = tmp_path / "pi.password"
    result = runner.invoke(
        broker_app,
        ["add-agent", "lab-pi-07", "--dir", str(tmp_path), "--secret-out", str(secret)],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # the password went to the file only
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    password = secret.read_text().strip()
    assert check_password(password, read_users(tmp_path / "passwd")["lab-pi-07"])
    result = runner.invoke(broker_app, ["list", "--dir", str(tmp_path)])
    assert result.stdout == "lab-pi-07\tagent lab-pi-07\n"
    missing = runner.invoke(broker_app, ["remove-agent", "nobody", "--dir", str(tmp_path)])
    assert missing.exit_code == 2 and "no agent 'nobody'" in missing.output


def test_an_unedited_env_file_does_not_start_the_stack() -> None:
    """Every password in env.example is empty, and compose refuses an empty one (``:?``): a
    copied but unedited .env cannot start services with a known password."""
    text = (DEPLOY / "env.example").read_text()
    passwords = re.findall(r"^(\w*PASSWORD)=(.*)$", text, re.M)
    assert {name for name, _ in passwords} >= {
        "FARM_MQTT_PASSWORD",
        "FARM_REDIS_PASSWORD",
        "FARM_REDIS_EXPORTER_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
    }
    compose_text = (DEPLOY / "docker-compose.yml").read_text()
    for name, value in passwords:
        assert value == "", name
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", compose_text)
        assert uses and all(use.startswith(":?") for use in uses), name
