"""The ``farm`` command line: the global options and the core's commands (``farm sim``,
``farm dataset``, ``farm simctl``); the layers above add theirs as plugins.

A plugin is an entry point of the ``tinyfarm.cli`` group naming a ``register(app)`` function
(``agent.cli:register``, ``controller.cli:register``), so the core names no layer above it.
A plugin that cannot be imported is left out, and the core's commands still work; the layers'
own modules import what their extra installs only inside their commands, so a Pi with only
the agent extra lists every command and a controller command there says which extra it needs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated

import typer

from farm.cli_common import fail
from farm.dataset_cli import dataset_app
from farm.logs import LogFormat, get_logger, setup_logging
from farm.sim_cli import sim
from farm.simctl_cli import simctl_app

PLUGIN_GROUP = "tinyfarm.cli"

app = typer.Typer(
    help="tinyfarm: run MLPerf Tiny on a farm of microcontroller boards.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(sim)
app.add_typer(dataset_app, name="dataset")
app.add_typer(simctl_app, name="simctl")
log = get_logger("farm.cli")


def add_plugins(app: typer.Typer, plugins: Iterable[EntryPoint]) -> dict[str, ImportError]:
    """Let every plugin register its commands on ``app``, in name order (a stable ``--help``);
    returns the plugins left out because they could not be imported, with the error."""
    skipped: dict[str, ImportError] = {}
    for plugin in sorted(plugins, key=lambda p: p.name):
        try:
            register = plugin.load()
        except ImportError as exc:
            skipped[plugin.name] = exc
            continue
        register(app)
    if skipped:
        # Logging is set up only once a command runs; `farm --help` is where one looks when
        # a command is missing.
        app.info.epilog = "Left out (cannot be imported): " + "; ".join(
            f"{name} commands ({exc})" for name, exc in skipped.items()
        )
    return skipped


_skipped = add_plugins(app, entry_points(group=PLUGIN_GROUP))


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
    log_format: Annotated[str, typer.Option(help="kv (key=value) or json")] = "kv",
) -> None:
    """Global options."""
    if log_format not in ("kv", "json"):
        raise fail(f"--log-format must be kv or json, not {log_format!r}")
    fmt: LogFormat = "json" if log_format == "json" else "kv"
    setup_logging(log_level, fmt)
    for name, exc in _skipped.items():
        log.info("cli_plugin_skipped", plugin=name, error=exc)


if __name__ == "__main__":
    sys.exit(app())
