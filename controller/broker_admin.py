"""The Mosquitto users of a farm — agents and the controller — in the broker's password file
and ACL (``deploy/mosquitto/``): what ``farm broker`` (:mod:`controller.broker_cli`) does.

An agent whose MQTT user name is its agent id needs no ACL line of its own: the shipped ACL
confines every such agent with two ``pattern`` lines (``%u``). An agent whose user name differs
gets a marked block of its own in the ACL, which :func:`remove_agent` takes out again.
:func:`add_controller` adds a user the ACL names (``farm-controller``, shared by the
controller's processes).

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
import tempfile
from dataclasses import dataclass
from pathlib import Path

from farm.messages import ID_PATTERN

CONTROLLER_USER = "farm-controller"
RESERVED = frozenset({CONTROLLER_USER, "farm-admin"})
"""User names the shipped ACL gives other rights: never an agent's."""
DEFAULT_ITERATIONS = 10_000
"""PBKDF2 rounds: about 10 ms of the broker's time per connection. Mosquitto 2.0's own
mosquitto_passwd uses 101; the generated passwords (192 random bits) need no stretching at
all, a password given on stdin may."""
SALT_BYTES = 12  # as mosquitto_passwd
USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""An MQTT user name: an id without ':' (the password file's separator)."""


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


def parse_owner(owner: str) -> tuple[int, int]:
    """``USER[:GROUP]`` (names or numeric ids) as ``(uid, gid)``."""
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
