"""``farm broker``: the Mosquitto users of a farm — agents and the controller — in the broker's
password file and ACL (``deploy/mosquitto/``).

``farm broker add-agent lab-pi-03 --dir deploy/mosquitto`` adds the MQTT user ``lab-pi-03``
with a generated password (printed once on stdout, or written to ``--secret-out`` for the
Pi's ``password_file``). The shipped ACL confines every agent whose user name is its agent id
with two ``pattern`` lines (``%u``), so such an agent needs no ACL line of its own; an agent
whose user name differs (``--user agent-lab-pi-03``) gets a marked block of its own in the
ACL, which ``remove-agent`` takes out again. ``add-controller`` adds the user the controller's
processes share (``farm-controller``, which the ACL names).

Passwords are stored the way ``mosquitto_passwd`` of Mosquitto 2.0 stores them
(``$7$<iterations>$<salt>$<PBKDF2-SHA512>``, base64), computed here with :mod:`hashlib`, so a
server that runs Mosquitto in a container needs no mosquitto tools on the host. Both files are
replaced atomically, keeping their owner and mode: Mosquitto reads them after dropping to its
own user, at start and on SIGHUP, and does not start without a readable password file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from farm.messages import ID_PATTERN

broker_app = typer.Typer(
    help="Mosquitto users: add or remove an agent, add the controller's user.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)

CONTROLLER_USER = "farm-controller"
RESERVED = frozenset({CONTROLLER_USER, "farm-admin"})
"""User names the shipped ACL gives other rights: never an agent's."""
DEFAULT_DIR = Path("/etc/mosquitto/tinyfarm")
DEFAULT_ITERATIONS = 10_000
"""PBKDF2 rounds: about 10 ms of the broker's time per connection. Mosquitto 2.0's own
mosquitto_passwd uses 101; the generated passwords (192 random bits) need no stretching at
all, a password given on stdin may."""
SALT_BYTES = 12  # as mosquitto_passwd
USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""An MQTT user name: an id without ':' (the password file's separator)."""
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


class BrokerFileError(Exception):
    """A user or file problem, reported as one line."""


# -- the password file ------------------------------------------------------------------------


def hash_password(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """``$7$<iterations>$<salt>$<hash>``: Mosquitto 2.0's PBKDF2-SHA512 password hash."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``$7$`` (PBKDF2-SHA512) hash of the password file."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), parts[4]
    computed = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return secrets.compare_digest(base64.b64encode(computed).decode(), digest)


def read_users(passwd: Path) -> dict[str, str]:
    """User name -> stored hash (an absent file has no users)."""
    users: dict[str, str] = {}
    try:
        text = passwd.read_text()
    except FileNotFoundError:
        return users
    for line in text.splitlines():
        name, sep, stored = line.strip().partition(":")
        if sep and name and not name.startswith("#"):
            users[name] = stored
    return users


def _set_user(text: str, user: str, stored: str | None) -> str:
    """The password file's text with ``user``'s line replaced, added (``stored``) or removed
    (``None``); every other line as it was."""
    lines = [line for line in text.splitlines() if line.partition(":")[0].strip() != user]
    if stored is not None:
        lines.append(f"{user}:{stored}")
    return "".join(f"{line}\n" for line in lines)


# -- the ACL ----------------------------------------------------------------------------------


def _begin(agent: str) -> str:
    return f"# >>> tinyfarm agent {agent}"


def _end(agent: str) -> str:
    return f"# <<< tinyfarm agent {agent}"


def agent_block(agent: str, user: str) -> str:
    """The ACL lines of an agent whose MQTT user name is not its id."""
    return (
        f"{_begin(agent)} (MQTT user {user}; written by farm broker add-agent)\n"
        f"user {user}\n"
        f"topic write farm/v1/agent/{agent}/#\n"
        f"topic read farm/v1/cmd/{agent}/#\n"
        f"{_end(agent)}\n"
    )


_BLOCK = re.compile(
    r"^# >>> tinyfarm agent (?P<agent>\S+) .*?\n"
    r"user (?P<user>\S+)\n"
    r".*?^# <<< tinyfarm agent (?P=agent)\n",
    re.MULTILINE | re.DOTALL,
)


def mapped_agents(acl_text: str) -> dict[str, str]:
    """Agent id -> MQTT user for the agents with a block of their own."""
    return {m["agent"]: m["user"] for m in _BLOCK.finditer(acl_text)}


def _without_block(acl_text: str, agent: str) -> str:
    return _BLOCK.sub(lambda m: "" if m["agent"] == agent else m.group(0), acl_text)


def acl_users(acl_text: str) -> set[str]:
    """Users the ACL names in a ``user`` line (comments ignored)."""
    return {
        line.split(None, 1)[1].strip()
        for line in acl_text.splitlines()
        if line.startswith("user ") and len(line.split(None, 1)) == 2
    }


# -- files ------------------------------------------------------------------------------------


def _parse_owner(owner: str) -> tuple[int, int]:
    import grp
    import pwd

    user, _, group = owner.partition(":")

    def uid(name: str) -> int:
        return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid

    def gid(name: str) -> int:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid

    try:
        u = uid(user)
        g = gid(group) if group else (pwd.getpwuid(u).pw_gid if not user.isdigit() else u)
    except KeyError as exc:
        raise BrokerFileError(f"--owner {owner!r}: no such user or group ({exc})") from None
    return u, g


def _default_owner() -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def write_atomically(path: Path, text: str, *, owner: tuple[int, int] | None, mode: int) -> None:
    """Replace ``path`` with ``text`` in one step (a reader sees the old or the new file),
    keeping the old file's owner and mode; a new file gets ``owner`` (if given) and ``mode``."""
    try:
        st = path.stat()
        owner, mode = (st.st_uid, st.st_gid), st.st_mode & 0o7777
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None and (os.geteuid() == 0 or owner[0] == os.geteuid()):
            os.chown(tmp, *owner)
        elif owner is not None and owner != (os.geteuid(), os.getegid()):
            raise BrokerFileError(
                f"{path} belongs to uid {owner[0]}: run this as root (sudo) so the broker "
                "can still read it"
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class BrokerFiles:
    """The password file and the ACL of one broker."""

    directory: Path

    @property
    def passwd(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl(self) -> Path:
        return self.directory / "acl"

    def acl_text(self) -> str:
        try:
            return self.acl.read_text()
        except FileNotFoundError:
            raise BrokerFileError(
                f"no ACL at {self.acl}: copy deploy/mosquitto/acl there first"
            ) from None

    def set_password(
        self, user: str, stored: str | None, *, owner: tuple[int, int] | None = None
    ) -> None:
        try:
            text = self.passwd.read_text()
        except FileNotFoundError:
            text = ""
            if owner is None:
                owner = _default_owner()
        write_atomically(self.passwd, _set_user(text, user, stored), owner=owner, mode=0o600)

    def write_acl(self, text: str) -> None:
        write_atomically(self.acl, text, owner=None, mode=0o644)


# -- operations (the commands without the CLI) ------------------------------------------------


def _check_user_name(user: str, what: str) -> None:
    if not re.fullmatch(USER_PATTERN, user):
        raise BrokerFileError(
            f"{what} {user!r}: letters, digits, '_', '.', '-' (no ':'), at most 128 characters"
        )


def add_agent(
    files: BrokerFiles,
    agent: str,
    password: str,
    *,
    user: str | None = None,
    force: bool = False,
    iterations: int = DEFAULT_ITERATIONS,
    owner: tuple[int, int] | None = None,
) -> str:
    """Add (or, with ``force``, re-key) an agent; returns its MQTT user name."""
    if not re.fullmatch(ID_PATTERN, agent):
        raise BrokerFileError(
            f"agent id {agent!r}: letters, digits, '_', '.', ':', '-' (one MQTT topic level)"
        )
    user = user or agent
    if user == agent and ":" in agent:
        raise BrokerFileError(
            f"agent id {agent!r} contains ':', which no MQTT user name may: give --user NAME"
        )
    _check_user_name(user, "user name")
    for name in {agent, user}:
        if name in RESERVED:
            raise BrokerFileError(f"{name!r} is reserved for the controller or the operator")
    acl_text = files.acl_text()
    users = read_users(files.passwd)
    mapped = mapped_agents(acl_text)  # agent -> user, for agents with a block of their own
    owners = {u: a for a, u in mapped.items()}
    if user in users:
        if not force:
            raise BrokerFileError(
                f"user {user!r} already exists in {files.passwd} (--force gives it a new password)"
            )
        if owners.get(user, user) != agent:
            raise BrokerFileError(f"user {user!r} belongs to agent {owners.get(user, user)!r}")
    if user in owners and owners[user] != agent:
        raise BrokerFileError(f"user {user!r} belongs to agent {owners[user]!r}")
    if agent in mapped and mapped[agent] != user:
        raise BrokerFileError(
            f"agent {agent!r} has MQTT user {mapped[agent]!r}: remove-agent it first"
        )
    if user != agent:
        # The %u patterns give every user the prefix of its own name: a user named like this
        # agent could publish as it, and this user's name must not be another agent's id.
        if agent in users:
            raise BrokerFileError(
                f"a user named {agent!r} exists and, by the ACL's %u patterns, may publish as "
                "that agent: remove it first"
            )
        if user in mapped:
            raise BrokerFileError(f"{user!r} is the id of another agent")
        if agent not in mapped:
            if not acl_text.endswith("\n"):
                acl_text += "\n"
            files.write_acl(acl_text + agent_block(agent, user))
    files.set_password(user, hash_password(password, iterations=iterations), owner=owner)
    return user


def remove_agent(files: BrokerFiles, agent: str) -> str:
    """Remove an agent's user and ACL block; returns the user name removed."""
    if agent in RESERVED:
        raise BrokerFileError(f"{agent!r} is not an agent")
    acl_text = files.acl_text()
    mapped = mapped_agents(acl_text)
    owners = {u: a for a, u in mapped.items()}
    if agent in owners and agent not in mapped:
        raise BrokerFileError(
            f"{agent!r} is the MQTT user of agent {owners[agent]!r}: remove-agent {owners[agent]}"
        )
    user = mapped.get(agent, agent)
    users = read_users(files.passwd)
    if agent not in mapped and user not in users:
        raise BrokerFileError(f"no agent {agent!r} (no such user in {files.passwd})")
    if agent in mapped:
        files.write_acl(_without_block(acl_text, agent))
    if user in users:
        files.set_password(user, None)
    return user


def add_controller(
    files: BrokerFiles,
    password: str,
    *,
    user: str = CONTROLLER_USER,
    force: bool = False,
    iterations: int = DEFAULT_ITERATIONS,
    owner: tuple[int, int] | None = None,
) -> None:
    """Add (or re-key) a user that the ACL names in a ``user`` block of its own."""
    _check_user_name(user, "user name")
    if user not in acl_users(files.acl_text()):
        raise BrokerFileError(
            f"the ACL {files.acl} has no `user {user}` block: this user would have no rights"
        )
    if user in read_users(files.passwd) and not force:
        raise BrokerFileError(
            f"user {user!r} already exists in {files.passwd} (--force gives it a new password)"
        )
    files.set_password(user, hash_password(password, iterations=iterations), owner=owner)


# -- the commands -----------------------------------------------------------------------------


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _password(from_stdin: bool) -> tuple[str, bool]:
    """The password and whether it was generated."""
    if not from_stdin:
        return secrets.token_urlsafe(24), True
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise _fail("no password on stdin")
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
    password, generated = _password(password_stdin)
    try:
        name = add_agent(
            BrokerFiles(directory),
            agent,
            password,
            user=user,
            force=force,
            iterations=iterations,
            owner=_parse_owner(owner) if owner else None,
        )
    except (BrokerFileError, OSError) as exc:
        raise _fail(str(exc)) from None
    _hand_out(password, generated, secret_out)
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
        raise _fail(str(exc)) from None
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
    password, generated = _password(password_stdin)
    try:
        add_controller(
            BrokerFiles(directory),
            password,
            user=user,
            force=force,
            iterations=iterations,
            owner=_parse_owner(owner) if owner else None,
        )
    except (BrokerFileError, OSError) as exc:
        raise _fail(str(exc)) from None
    _hand_out(password, generated, secret_out)
    err.print(f"user {user} added; {RELOAD_HINT}", highlight=False)


@broker_app.command("list")
def list_command(directory: DirOpt = DEFAULT_DIR) -> None:
    """The broker's users and what the ACL lets each do."""
    files = BrokerFiles(directory)
    try:
        acl_text = files.acl_text()
    except BrokerFileError as exc:
        raise _fail(str(exc)) from None
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


if __name__ == "__main__":
    sys.exit(broker_app())
