"""The ``farm`` command line.

The CLI lives in ``farm`` so every install has it; commands that need the agent or the
controller import them inside the command, so a Pi with only the agent extra (or a server
with only the controller extra) never imports what it did not install.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from farm.cli_common import fail
from farm.dataset_cli import dataset_app
from farm.logs import LogFormat, setup_logging
from farm.sim_cli import sim
from farm.simctl_cli import simctl_app

app = typer.Typer(
    help="tinyfarm: run MLPerf Tiny on a farm of microcontroller boards.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(sim)
app.add_typer(dataset_app, name="dataset")
app.add_typer(simctl_app, name="simctl")


def _add_layer_commands() -> None:
    from agent.cli import register as register_agent
    from controller.cli import register as register_controller

    register_agent(app)
    register_controller(app)


_add_layer_commands()


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


if __name__ == "__main__":
    sys.exit(app())
