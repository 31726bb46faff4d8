"""The ``farm`` command line gets the layers' commands through the ``tinyfarm.cli`` entry
points (and ``farm sim`` the agent's part through ``tinyfarm.sim_agent``): every command is
there, and an install without an extra (or without a plugin at all) still runs the core's
commands. A missing extra is an import that fails: the subprocesses below make those imports
fail before ``farm.cli`` is loaded, as on a Pi or a bare server."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import typer.main

from farm.cli import PLUGIN_GROUP, app
from farm.sim_agent import SUPPORT_GROUP

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "agent": {"check", "suggest"},
    "broker": {"add-agent", "remove-agent", "add-controller", "list"},
    "controller": {"worker", "ingest", "exporter", "redis-acl"},
    "dataset": {"synth"},
    "simctl": {"flash", "power-cycle", "status"},
    "sim": None,
    "run": None,
    "submit": None,
    "status": None,
    "sweeps": None,
    "show": None,
    "compare": None,
    "report": None,
    "cancel": None,
    "demo": None,
    "export": {"submission"},
    "board": {"health-check", "flash", "power-cycle", "reserve", "release", "console"},
}
CONTROLLER_EXTRA = (
    "redis",
    "hiredis",
    "rq",
    "prometheus_client",
    "numpy",
    "sklearn",
    "matplotlib",
)
AGENT_EXTRA = ("serial", "serial_asyncio_fast")
# Import failures are set up before farm.cli is imported, so its entry points see them.
FARM = """
import sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None  # `import name` raises ImportError, as if not installed
from farm.cli import app
app(args=sys.argv[2:], prog_name="farm")
"""


def farm(missing: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """``farm ARGS`` in a process where every module of ``missing`` cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", FARM, ",".join(missing), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        check=False,
    )


def declared(group: str) -> list[EntryPoint]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        EntryPoint(name=n, value=v, group=group) for n, v in project["entry-points"][group].items()
    ]


def test_each_declared_plugin_is_a_register_function() -> None:
    plugins = declared(PLUGIN_GROUP)
    assert {p.name for p in plugins} == {"agent", "controller"}
    for plugin in plugins:
        assert callable(plugin.load()), plugin


def test_the_declared_sim_support_has_what_farm_sim_calls() -> None:
    (support,) = declared(SUPPORT_GROUP)
    module = support.load()
    for function in ("check_options", "config_yaml", "prober"):
        assert callable(getattr(module, function)), function


def test_the_installed_metadata_declares_the_plugins() -> None:
    for group in (PLUGIN_GROUP, SUPPORT_GROUP):
        installed = {(p.name, p.value) for p in entry_points(group=group)}
        expected = {(p.name, p.value) for p in declared(group)}
        assert installed == expected, f"stale {group} metadata: run pip install -e . again"


def test_farm_has_every_command() -> None:
    root = typer.main.get_command(app)
    assert set(root.commands) == set(COMMANDS)  # type: ignore[attr-defined]
    for name, subcommands in COMMANDS.items():
        if subcommands is not None:
            assert set(root.commands[name].commands) == subcommands, name  # type: ignore[attr-defined]


def test_without_the_controller_plugin_the_core_commands_still_work(tmp_path: Path) -> None:
    listed = farm(("controller.cli",), "--help")
    assert listed.returncode == 0, listed.stderr
    assert "Left out (cannot be imported): controller commands" in listed.stdout
    for command in ("sim", "run", "agent", "dataset", "simctl"):
        assert f" {command} " in listed.stdout
    assert " submit " not in listed.stdout

    synth = farm(
        ("controller.cli",),
        "--log-level",
        "info",
        "dataset",
        "synth",
        "--out",
        str(tmp_path),
        "--models",
        "kws01",
        "--limit",
        "2",
    )
    assert synth.returncode == 0, synth.stderr
    assert len((tmp_path / "kws01" / "y_labels.csv").read_text().splitlines()) == 2
    assert "event=cli_plugin_skipped plugin=controller" in synth.stderr

    missing = farm(("controller.cli",), "submit", "--benchmark", "kws01")
    assert missing.returncode == 2
    assert "No such command 'submit'" in missing.stderr


def test_a_pi_with_only_the_agent_extra_lists_every_command() -> None:
    listed = farm(CONTROLLER_EXTRA, "--help")
    assert listed.returncode == 0, listed.stderr
    assert "Left out" not in listed.stdout
    for command in COMMANDS:
        assert f" {command} " in listed.stdout

    submit = farm(CONTROLLER_EXTRA, "submit", "--benchmark", "kws01")
    assert submit.returncode == 2
    assert "this command needs the controller extra (pip install 'tinyfarm[controller]')" in (
        submit.stderr
    )
    assert "Traceback" not in submit.stderr


def test_a_server_without_the_agent_extra_says_what_farm_run_needs(tmp_path: Path) -> None:
    run = farm(
        AGENT_EXTRA,
        "run",
        "--benchmark",
        "kws01",
        "--mode",
        "performance",
        "--dataset",
        str(tmp_path),
        "--port",
        "/dev/null",
    )
    assert run.returncode == 2
    assert "farm run needs the agent and scoring extras" in run.stderr


def test_sim_check_without_the_agent_extra_says_what_it_needs(tmp_path: Path) -> None:
    check = farm(AGENT_EXTRA, "sim", "--out", str(tmp_path), "--boards", "1", "--check")
    assert check.returncode == 2
    assert "--check needs the agent extra (pip install 'tinyfarm[agent]')" in check.stderr
    assert not (tmp_path / "boards.json").exists()  # the simulator cleaned up
