"""A whole farm for the controller's end-to-end tests, every part real: a private Mosquitto,
a dedicated Redis database, `farm sim` boards with their agents, `farm controller ingest`,
RQ worker processes (`farm controller worker`), and the client commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from tests.integration.farm_procs import (
    Mosquitto,
    PrivateRedis,
    Proc,
    agent_proc,
    boards_idle_and_healthy,
    farm_command,
    processes_named,
    start_sim,
    wait_until,
)

#: The controller tests' Redis database (flushed by each lab; its RQ queues are shared by every
#: lab using it). ``FARM_TEST_CONTROLLER_REDIS`` picks another, so that two checkouts tested on
#: one host at once do not flush each other's database or run each other's jobs.
REDIS_URL = os.environ.get("FARM_TEST_CONTROLLER_REDIS", "redis://127.0.0.1:6379/13")


@dataclass
class ControllerLab:
    """Everything started for one test; :meth:`stop` ends it all."""

    dir: Path
    broker: Mosquitto
    redis: redis.Redis
    sims: dict[str, Proc] = field(default_factory=dict)
    agents: dict[str, Proc] = field(default_factory=dict)
    workers: list[Proc] = field(default_factory=list)
    ingest: Proc | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    """More environment for the controller processes (set before starting them)."""
    redis_url: str = REDIS_URL
    """The Redis every controller process and client command is given."""
    redis_server: PrivateRedis | None = None
    """The private server of ``redis_url``, if the test started one (to restart it)."""

    @property
    def env(self) -> dict[str, str]:
        """What every controller process and client command is pointed at."""
        return {
            "FARM_REDIS_URL": self.redis_url,
            "FARM_MQTT_URL": self.broker.url,
            "FARM_RESULTS_DIR": str(self.dir / "results"),
            "FARM_AGENT_GRACE_S": "5",
            **self.extra_env,
        }

    async def add_agent(
        self,
        agent: str,
        boards: str,
        *,
        dataset_limit: int | str | None = 10,
        agent_config: Mapping[str, Any] | None = None,
    ) -> None:
        """`farm sim` for ``boards`` (YAML list) and its agent ``agent`` (``dataset_limit``:
        :func:`start_sim`'s; ``agent_config``: settings added to the agent.yaml it wrote)."""
        out = self.dir / f"sim-{agent}"
        self.sims[agent] = await start_sim(
            out,
            boards,
            seed=5,
            agent=agent,
            broker=self.broker.url,
            dataset_limit=dataset_limit,
            extra=("--transcripts",),
        )
        if agent_config:
            config = out / "agent.yaml"
            config.write_text(
                yaml.safe_dump({**yaml.safe_load(config.read_text()), **agent_config})
            )
        proc = agent_proc(out, self.dir / f"agent-{agent}.log")
        await proc.start()
        self.agents[agent] = proc

    async def start_controller(self, workers: int = 2) -> None:
        """Ingest and ``workers`` RQ workers (none: :meth:`add_workers` later)."""
        self.ingest = Proc(
            # Fewer messages at once than the default: the option reaches the process.
            ["--log-level", "info", "controller", "ingest", "--concurrency", "4"],
            self.dir / "ingest.log",
            env=self.env,
        )
        await self.ingest.start()
        if workers:
            await self.add_workers(workers)

    async def add_workers(self, count: int) -> None:
        """Start one more ``farm controller worker`` with ``count`` RQ worker processes."""
        i = len(self.workers)
        worker = Proc(
            [
                "--log-level",
                "info",
                "controller",
                "worker",
                "--processes",
                str(count),
                "--name",
                f"w{i}-{os.getpid()}",
            ],
            self.dir / f"worker{i}.log",
            env=self.env,
        )
        await worker.start()
        self.workers.append(worker)

    async def boards_ready(self, boards: list[str], within: float = 60) -> None:
        """Wait until ingest knows every board, checked and idle."""
        await wait_until(
            lambda: boards_idle_and_healthy(self.redis, boards),
            within,
            f"boards {boards} idle and healthy",
        )

    async def farm(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        """Run a client command (``farm ARGS``); return (status, stdout, stderr)."""
        code, out, errs = await farm_command(args, self.env, 600)
        if check and code != 0:
            raise AssertionError(f"farm {' '.join(args)} exited {code}:\n{errs}\n{self.logs()}")
        return code, out, errs

    async def export_submission(
        self, out: Path, *sweeps: str, division: str = "closed", version: str = "v1.4"
    ) -> tuple[int, dict[str, Any], str]:
        """``farm export submission`` for submitter ``Org`` as JSON: (status, the document,
        or ``{}`` when nothing was printed, stderr)."""
        code, stdout, stderr = await self.farm(
            "export",
            "submission",
            "--submitter",
            "Org",
            "--division",
            division,
            "--version",
            version,
            "--out",
            str(out),
            "--format",
            "json",
            *sweeps,
            check=False,
        )
        return code, (json.loads(stdout) if stdout.strip() else {}), stderr

    def logs(self) -> str:
        """The tail of every process log, for a failing assertion."""
        parts = []
        for log in sorted(self.dir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    async def stop(self) -> None:
        """Stop everything, newest first; fail if a worker pool left a process behind (one
        that outlived its parent is no longer below any process the lab started, but it still
        carries its pool's command line)."""
        ingest = [self.ingest] if self.ingest else []
        for proc in [*self.workers, *ingest, *self.agents.values(), *self.sims.values()]:
            await proc.stop()
        await self.broker.stop()
        names = [w.args[w.args.index("--name") + 1] for w in self.workers if "--name" in w.args]
        # A dead worker's scheduler process gets SIGTERM and stops at its next 1 s tick.
        strays: list[int] = []
        for _ in range(40):
            strays = [pid for name in names for pid in processes_named(name)]
            if not strays:
                break
            await asyncio.sleep(0.1)
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        assert not strays, f"processes left behind by the worker pools {names}: {strays}"


async def start_controller_lab(
    tmp_path: Path, redis_url: str = REDIS_URL, *, persistence: bool = True
) -> ControllerLab:
    """A broker (``persistence``: whether it saves sessions and queued messages across a
    restart) and a flushed Redis database (``redis_url``: a private server's, fresh and not
    flushed); add agents and the controller after."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    if redis_url == REDIS_URL:
        client.flushdb()
    broker = Mosquitto(tmp_path / "mqtt", persistence=persistence)
    await broker.start()
    return ControllerLab(tmp_path, broker, client, redis_url=redis_url)
