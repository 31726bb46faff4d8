"""What produced a run's results: the firmware image file the agent's config names for the
firmware the DUT reports (its SHA-256 and file name), the DUT's ``profile`` and ``name``
answers, and this agent's software version (``farm.messages.FirmwareIdentity``, sent in the
run's ``started`` event).

An image is hashed once: :class:`ImageDigests` keeps each file's digest with the size and
modification time it was read at, so a replaced file (a new build copied over the old one)
is hashed again and an unchanged one never is. Hashing runs off the event loop: a firmware
image may be megabytes and an SD card slow.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from agent.board_access import Identity
from agent.config import BoardConfig
from farm.logs import get_logger
from farm.messages import FirmwareIdentity

log = get_logger("agent.identity")

#: Bytes read at a time while hashing an image.
CHUNK = 1 << 20
#: Longest DUT answer kept (``FirmwareIdentity``'s bound).
TEXT_MAX = 120


@functools.cache
def software_version() -> str:
    """The installed tinyfarm version."""
    try:
        return version("tinyfarm")
    except PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, lower-case hex (blocking: call it in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ImageDigests:
    """The SHA-256 of firmware image files, each computed once per version of the file."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[int, int, str]] = {}
        """path -> (size, mtime in ns, digest) of the file when it was hashed."""

    async def digest(self, path: Path) -> str | None:
        """The file's SHA-256, hashed in a thread unless known for its current size and
        modification time; ``None`` (logged) when it cannot be read."""
        try:
            stat = await asyncio.to_thread(os.stat, path)
            known = self._known.get(path)
            if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
                return known[2]
            value = await asyncio.to_thread(file_sha256, path)
        except OSError as exc:
            log.warning("image_unreadable", image=str(path), error=exc.strerror or str(exc))
            return None
        self._known[path] = (stat.st_size, stat.st_mtime_ns, value)
        return value


async def firmware_identity(
    cfg: BoardConfig, identity: Identity, digests: ImageDigests
) -> FirmwareIdentity:
    """The identity of what the DUT runs: its answers and, if the board's config names an
    image for the model and build it reports, that image's file name and digest."""
    builds = cfg.firmware.images.get(identity.model, {})
    image = next((path for build, path in builds.items() if build == identity.build), None)
    # A DUT may answer anything: its strings are cut to what the message allows.
    return FirmwareIdentity(
        image=None if image is None else image.name,
        sha256=None if image is None else await digests.digest(image),
        profile=None if identity.profile is None else identity.profile[:TEXT_MAX],
        name=identity.vendor[:TEXT_MAX],
        software=software_version()[:64],
    )
