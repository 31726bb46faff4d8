"""The farm's Redis users, as an ACL file (``aclfile`` in redis.conf, ``--aclfile`` in compose).

- ``default``: off. A connection that does not authenticate can run nothing.
- ``farm-controller`` (worker, ingest, client commands, ``rq cron``): reads and writes the
  farm's and RQ's keys (``farm:*``, ``rq:*``) and RQ's pubsub channels, every command except
  the ``@dangerous`` and ``@admin`` ones (CONFIG, FLUSHALL, DEBUG, MODULE, SHUTDOWN, KEYS,
  MONITOR, ...). INFO is ``@dangerous`` but RQ's workers read the server's version with it.
- ``farm-exporter`` (``farm controller exporter``): only ``@read`` commands on the same keys,
  plus PING (redis-py ignores the refusal of the CLIENT SETINFO it sends on connecting).

Passwords are written as their SHA-256 (``#<hex>``), so the file holds no password; a
password is whatever the controller's URL carries (``redis://farm-controller:PASS@...``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping

#: The environment variable holding each user's password (deploy/.env, controller.env).
PASSWORD_ENV = {
    "farm-controller": "FARM_REDIS_PASSWORD",
    "farm-exporter": "FARM_REDIS_EXPORTER_PASSWORD",
}
#: Key and channel patterns: the farm's own keys (controller.keys) and RQ's.
_KEYS = "resetkeys ~farm:* ~rq:* resetchannels &rq:*"
#: Each user's rules after its password. Later rules win: categories first, then exceptions.
RULES = {
    "farm-controller": f"{_KEYS} -@all +@all -@dangerous -@admin +info",
    "farm-exporter": f"{_KEYS} -@all +@read -@dangerous +ping",
}
#: What a password may be: long enough to resist guessing, and safe in a URL and an .env
#: line without quoting (``secrets.token_urlsafe`` makes such).
_PASSWORD = re.compile(r"[A-Za-z0-9_\-.~]{16,}")


class AclError(ValueError):
    """A password is missing or unusable: the message names its variable."""


def user_line(user: str, password: str) -> str:
    """The ACL file line of ``user`` with ``password`` (stored as its SHA-256)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user {user} reset on #{digest} {RULES[user]}"


def acl_file(passwords: Mapping[str, str]) -> str:
    """The whole ACL file: ``default`` off, and each farm user with its password."""
    lines = ["user default reset off"]
    lines += [user_line(user, passwords[user]) for user in RULES]
    return "\n".join(lines) + "\n"


def passwords_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Each user's password from its variable (:data:`PASSWORD_ENV`)."""
    found = {}
    for user, name in PASSWORD_ENV.items():
        value = environ.get(name, "")
        if not _PASSWORD.fullmatch(value):
            raise AclError(
                f"{name} must be set to at least 16 characters of A-Z a-z 0-9 _ - . ~ "
                "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        found[user] = value
    if len(set(found.values())) < len(found):
        raise AclError(f"{' and '.join(PASSWORD_ENV.values())} must differ")
    return found
