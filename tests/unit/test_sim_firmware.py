"""Simulated firmware images: written for every model and build, read back, and every kind of
wrong file refused with a message naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.models import MODELS
from farm.sim.firmware import (
    BUILDS,
    MAGIC,
    MAX_IMAGE_BYTES,
    FirmwareImageError,
    image_path,
    read_image,
    write_images,
)


def test_image_path_layout(tmp_path: Path) -> None:
    assert image_path(tmp_path, "vww01", "energy") == tmp_path / "firmware" / "vww01-energy.bin"


def test_write_images_writes_every_model_and_build_and_reads_back(tmp_path: Path) -> None:
    written = write_images(tmp_path, MODELS)
    assert set(written) == set(MODELS)
    assert BUILDS == ("performance", "energy")
    for model, builds in written.items():
        assert set(builds) == set(BUILDS)
        for build, path in builds.items():
            assert path == image_path(tmp_path, model, build)
            assert read_image(path) == (model, build)
    text = (tmp_path / "firmware" / "vww01-performance.bin").read_text()
    assert text == f"{MAGIC}\nmodel=vww01\nbuild=performance\n"
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "firmware").iterdir()) == sorted(
        f"{m}-{b}.bin" for m in MODELS for b in BUILDS
    )


def test_write_images_is_idempotent(tmp_path: Path) -> None:
    write_images(tmp_path, ["kws01"])
    write_images(tmp_path, ["kws01"])
    assert read_image(image_path(tmp_path, "kws01", "energy")) == ("kws01", "energy")


def test_write_images_refuses_an_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'foo'"):
        write_images(tmp_path, ["foo"])


def test_extra_keys_blank_lines_and_spaces_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_text(f"{MAGIC}\n\nbuild = energy\nnote=hand-written\nmodel=ad01\n")
    assert read_image(path) == ("ad01", "energy")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a simulated firmware image"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "not a simulated firmware image"),
        (b"\x00\x00\x02\x20\xc1\x01\x00\x08\xff\xfe", "binary"),
        (b"hello\nmodel=kws01\nbuild=performance\n", "the first line must be"),
        (b"TINYFARM-SIM-FIRMWARE 2\nmodel=kws01\nbuild=energy\n", "unsupported image version"),
        (f"{MAGIC}\nbuild=energy\n".encode(), "no model line"),
        (f"{MAGIC}\n".encode(), "no model or build line"),
        (f"{MAGIC}\nmodel=kws01\nbuild=debug\n".encode(), "unknown build 'debug'"),
        (f"{MAGIC}\nmodel=resnet\nbuild=energy\n".encode(), "unknown model 'resnet'"),
        (f"{MAGIC}\nmodel kws01\n".encode(), ":2: expected key=value"),
        (MAGIC.encode() + b"\n" + b"x" * MAX_IMAGE_BYTES, f"over {MAX_IMAGE_BYTES} bytes"),
    ],
)
def test_bad_images_are_refused_naming_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "image.bin"
    path.write_bytes(content)
    with pytest.raises(FirmwareImageError, match=message) as info:
        read_image(path)
    assert str(info.value).startswith(str(path))


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(FirmwareImageError, match="no such firmware image") as info:
        read_image(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(FirmwareImageError, match="is a directory"):
        read_image(tmp_path)


def test_image_error_is_a_value_error() -> None:
    assert issubclass(FirmwareImageError, ValueError)
