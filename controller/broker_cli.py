"""``farm broker``: add or remove an agent's Mosquitto user, add the controller's, list them
(the password file and ACL work is :mod:`controller.broker_admin`).

``farm broker add-agent lab-pi-03 --dir deploy/mosquitto`` adds the MQTT user ``lab-pi-03``
with a generated password (printed once on stdout, or written to ``--secret-out`` for the
Pi's ``password_file``); ``--user agent-lab-pi-03`` gives the agent a user name of its own
(and an ACL block). ``add-controller`` adds the user the controller's processes share
(``farm-controller``, which the ACL names). Every command needs only the standard library:
no extra.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from controller.broker_admin import (
    CONTROLLER_USER,
    DEFAULT_ITERATIONS,
    BrokerFileError,
    BrokerFiles,
    acl_users,
    add_agent,
    add_controller,
    mapped_agents,
    parse_owner,
    read_users,
    remove_agent,
)
from farm.cli_common import err, fail

broker_app = typer.Typer(
    help="Mosquitto users: add or remove an agent, add the controller's user.",
    no_args_is_help=True,
    add_completion=False,
)

_T = TypeVar("_T")

DEFAULT_DIR = Path("/etc/mosquitto/tinyfarm")
RELOAD_HINT = (
    "reload the broker to apply: docker compose kill -s HUP mosquitto "
    "(or: systemctl reload mosquitto)"
)

DirOpt = Annotated[
    Path,
    typer.Option(
        "--dir",
        envvar="FARM_MOSQUITTO_DIR",
        help="Mosquitto config directory holding `passwd` and `acl` (FARM_MOSQUITTO_DIR)",
    ),
]
PasswordStdinOpt = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from stdin instead of generating one"),
]
SecretOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--secret-out",
        help="Write the password to this file (mode 0600) instead of printing it",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the user's password if it exists")]
OwnerOpt = Annotated[
    str | None,
    typer.Option(
        "--owner",
        help="USER[:GROUP] owning a password file created now (default: the broker's user "
        "`mosquitto` if it exists here; use 1883:1883 for the eclipse-mosquitto container)",
    ),
]
IterationsOpt = Annotated[
    int, typer.Option("--iterations", min=1, help="PBKDF2-SHA512 rounds of the stored hash")
]


def _password(from_stdin: bool) -> tuple[str, bool]:
    """The password and whether it was generated."""
    if not from_stdin:
        return secrets.token_urlsafe(24), True
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise fail("no password on stdin")
    return password, False


def _hand_out(password: str, generated: bool, secret_out: Path | None) -> None:
    if secret_out is not None:
        fd = os.open(secret_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.chmod(secret_out, 0o600)
        err.print(f"password written to {secret_out} (mode 0600)", highlight=False)
    elif generated:
        print(password)  # only the password on stdout: PW=$(farm broker add-agent ...)


def _add_user(
    add: Callable[[BrokerFiles, str], _T],
    directory: Path,
    password_stdin: bool,
    secret_out: Path | None,
) -> _T:
    """Call ``add(files, password)`` with the password read or generated, then hand it out."""
    password, generated = _password(password_stdin)
    try:
        added = add(BrokerFiles(directory), password)
    except (BrokerFileError, OSError) as exc:
        raise fail(str(exc)) from None
    _hand_out(password, generated, secret_out)
    return added


def _owner(owner: str | None) -> tuple[int, int] | None:
    return parse_owner(owner) if owner else None


@broker_app.command("add-agent")
def add_agent_command(
    agent: Annotated[str, typer.Argument(help="The agent id (agent: in its agent.yaml)")],
    user: Annotated[
        str | None,
        typer.Option(help="MQTT user name, if not the agent id (adds an ACL block)"),
    ] = None,
    directory: DirOpt = DEFAULT_DIR,
    password_stdin: PasswordStdinOpt = False,
    secret_out: SecretOutOpt = None,
    force: ForceOpt = False,
    owner: OwnerOpt = None,
    iterations: IterationsOpt = DEFAULT_ITERATIONS,
) -> None:
    """Add an agent's MQTT user (password file, and the ACL if its user name is not its id).

    The generated password is printed on stdout (or written to --secret-out): put it in the
    Pi's broker.password_file. Reload the broker afterwards.
    """
    name = _add_user(
        lambda files, password: add_agent(
            files,
            agent,
            password,
            user=user,
            force=force,
            iterations=iterations,
            owner=_owner(owner),
        ),
        directory,
        password_stdin,
        secret_out,
    )
    err.print(
        f"agent {agent}: MQTT user {name} may write farm/v1/agent/{agent}/# and read "
        f"farm/v1/cmd/{agent}; {RELOAD_HINT}",
        highlight=False,
        soft_wrap=True,
    )


@broker_app.command("remove-agent")
def remove_agent_command(
    agent: Annotated[str, typer.Argument(help="The agent id")],
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Remove an agent's MQTT user (and its ACL block).

    Reload the broker afterwards. The agent's retained statuses stay on the broker until
    cleared (deploy/README.md: the farm-admin user).
    """
    try:
        name = remove_agent(BrokerFiles(directory), agent)
    except (BrokerFileError, OSError) as exc:
        raise fail(str(exc)) from None
    err.print(f"agent {agent}: MQTT user {name} removed; {RELOAD_HINT}", highlight=False)


@broker_app.command("add-controller")
def add_controller_command(
    user: Annotated[
        str, typer.Option(help="The user the ACL names (farm-controller; farm-admin)")
    ] = CONTROLLER_USER,
    directory: DirOpt = DEFAULT_DIR,
    password_stdin: PasswordStdinOpt = False,
    secret_out: SecretOutOpt = None,
    force: ForceOpt = False,
    owner: OwnerOpt = None,
    iterations: IterationsOpt = DEFAULT_ITERATIONS,
) -> None:
    """Add the user the controller's processes share (FARM_MQTT_URL=mqtt://USER:PASSWORD@...)."""
    _add_user(
        lambda files, password: add_controller(
            files, password, user=user, force=force, iterations=iterations, owner=_owner(owner)
        ),
        directory,
        password_stdin,
        secret_out,
    )
    err.print(f"user {user} added; {RELOAD_HINT}", highlight=False)


@broker_app.command("list")
def list_command(directory: DirOpt = DEFAULT_DIR) -> None:
    """The broker's users and what the ACL lets each do."""
    files = BrokerFiles(directory)
    try:
        acl_text = files.acl_text()
    except BrokerFileError as exc:
        raise fail(str(exc)) from None
    by_user = {u: a for a, u in mapped_agents(acl_text).items()}
    named = acl_users(acl_text)
    for user in sorted(read_users(files.passwd)):
        if user in by_user:
            role = f"agent {by_user[user]}"
        elif user in named:
            role = "controller/operator (ACL user block)"
        else:
            role = f"agent {user}"
        print(f"{user}\t{role}")
