"""Simulated firmware images: the files an agent flashes onto a simulated board.

A real board takes a multi-kilobyte ``.bin`` through ``st-flash write``; a simulated board
only needs to know which model and which build it will boot, so an image is a short text
file::

    TINYFARM-SIM-FIRMWARE 1
    model=vww01
    build=performance

``farm sim --out DIR`` writes one image per model and build under ``DIR/firmware/``; the
simulator's control server (:mod:`farm.sim.control`) reads them when asked to flash.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import get_args

from farm.models import MODELS
from farm.protocol.dut_firmware import Build

#: The first line of every image; the number is the format's version.
MAGIC = "TINYFARM-SIM-FIRMWARE 1"
#: Every build a board can run, in the order images are written.
BUILDS: tuple[Build, ...] = get_args(Build)
#: A real image would be far larger, but a simulated one is three short lines: anything much
#: bigger is the wrong file, and refusing it early keeps a mistaken multi-GB path cheap.
MAX_IMAGE_BYTES = 4096


class FirmwareImageError(ValueError):
    """A file that is not a usable simulated firmware image; the message names the file and
    what is wrong with it."""


class FlashRefused(ValueError):
    """A valid image that this board cannot take (an energy build on a board without an
    interface board, an unpowered target); the message says why."""


def image_path(out_dir: Path, model: str, build: str) -> Path:
    """Where ``farm sim --out out_dir`` keeps the image of ``model``'s ``build``."""
    return out_dir / "firmware" / f"{model}-{build}.bin"


def image_text(model: str, build: str) -> str:
    """The content of the image of ``model``'s ``build``."""
    return f"{MAGIC}\nmodel={model}\nbuild={build}\n"


def write_images(out_dir: Path, models: Iterable[str]) -> dict[str, dict[str, Path]]:
    """Write the image of every build of every model under ``out_dir/firmware``; return
    ``{model: {build: path}}``.

    Each file is written under a temporary name and renamed, so an agent flashing while the
    simulator (re)starts never reads half an image.
    """
    written: dict[str, dict[str, Path]] = {}
    for model in models:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}")
        written[model] = {}
        for build in BUILDS:
            path = image_path(out_dir, model, build)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(image_text(model, build))
            os.replace(tmp, path)
            written[model][build] = path
    return written


def read_image(path: Path) -> tuple[str, Build]:
    """Read an image; return its ``(model, build)``.

    Raises :class:`FirmwareImageError` for a missing or unreadable file, a file that is not a
    simulated image (wrong first line, binary, too large, no ``model``/``build``), an unknown
    model or an unknown build.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError:
        raise FirmwareImageError(f"{path}: no such firmware image") from None
    except IsADirectoryError:
        raise FirmwareImageError(f"{path}: is a directory, not a firmware image") from None
    except OSError as exc:
        raise FirmwareImageError(f"{path}: cannot read: {exc.strerror}") from None
    not_image = f"{path}: not a simulated firmware image (the first line must be {MAGIC!r})"
    if len(raw) > MAX_IMAGE_BYTES:
        raise FirmwareImageError(f"{not_image}; it is over {MAX_IMAGE_BYTES} bytes")
    try:
        lines = raw.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise FirmwareImageError(f"{not_image}; it is binary") from None
    if not lines or lines[0].strip() != MAGIC:
        header = lines[0].strip() if lines else ""
        if header.startswith(MAGIC.rsplit(" ", 1)[0] + " "):
            raise FirmwareImageError(f"{path}: unsupported image version {header!r}")
        raise FirmwareImageError(not_image)
    fields: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise FirmwareImageError(f"{path}:{number}: expected key=value, got {line!r}")
        fields[key.strip()] = value.strip()
    missing = [key for key in ("model", "build") if key not in fields]
    if missing:
        raise FirmwareImageError(f"{path}: no {' or '.join(missing)} line")
    model, build = fields["model"], fields["build"]
    if model not in MODELS:
        raise FirmwareImageError(
            f"{path}: unknown model {model!r}; known: {', '.join(sorted(MODELS))}"
        )
    for known in BUILDS:
        if build == known:
            return model, known
    raise FirmwareImageError(f"{path}: unknown build {build!r}; known: {', '.join(BUILDS)}")
