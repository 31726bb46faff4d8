"""The fake joulescope module against the real package (the js220 extra): the same call
signatures, the parameter values the client sets are ones the real package accepts, and
its stream buffer answers ``sample_id_range`` and ``samples_get`` as the real one does for
the same samples."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

from agent.js220_client import FIELDS, PARAMETERS, SCAN_CONFIG
from tests.fake_joulescope import ALLOWED, FakeDevice, FakeStreamBuffer, Level, Scripted

joulescope = pytest.importorskip("joulescope")
parameters_v1 = pytest.importorskip("joulescope.parameters_v1")
v1_device = pytest.importorskip("joulescope.v1.device")
v1_stream_buffer = pytest.importorskip("joulescope.v1.stream_buffer")

FIRST_ID = 7_340_032
#: The buffer's field ids of current, voltage and GPI0 (the current's LSB).
FIELD_IDS = {"current": (1, 0), "voltage": (2, 0), "current_lsb": (5, 0)}


def accepted(name: str) -> set[object]:
    """Every value the real package's ``parameter_set`` takes for ``name``."""
    found: set[object] = set()
    for label, value, aliases in parameters_v1.PARAMETERS_DICT[name].options:
        found |= {label, value, *aliases}
    return found


def parameters_of(fn: Any) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_the_client_sets_values_the_real_package_accepts() -> None:
    for name, value in PARAMETERS:
        parameters_v1.name_to_value(name, value)  # raises KeyError if refused
        assert value in ALLOWED[name]
    for name, values in ALLOWED.items():
        assert values <= accepted(name), name
    assert SCAN_CONFIG in ("auto", "ignore", "off")


def test_the_fake_has_the_real_signatures() -> None:
    real = v1_device.Device
    for method in ("open", "parameter_set", "start", "stop", "close", "info"):
        assert parameters_of(getattr(FakeDevice, method)) == parameters_of(getattr(real, method))
    for attribute in ("device_path", "serial_number", "model"):
        assert isinstance(getattr(real, attribute), property)
    buffer = v1_stream_buffer.StreamBuffer
    assert isinstance(buffer.sample_id_range, property)
    assert parameters_of(FakeStreamBuffer.samples_get) == parameters_of(buffer.samples_get)
    assert parameters_of(joulescope.scan) == ["name", "config"]
    assert parameters_of(joulescope.scan_require_one) == ["name", "config"]


def test_the_fake_buffer_answers_as_the_real_one() -> None:
    profile = Scripted(
        [Level(3_000, 0.001, 1.8, 1), Level(1_500, 0.02, 1.8, 0), Level(2_500, 0.004, 3.3, 1)],
        chunk=7_000,
    )
    real = v1_stream_buffer.StreamBuffer(1.0, 2_000_000, "js220", output_frequency=1_000_000)
    profile.limit = 0
    fake = FakeStreamBuffer(profile, first_id=FIRST_ID, capacity=30_000_000)
    assert fake.sample_id_range == real.sample_id_range == (0, 0)  # no data yet
    profile.limit = profile.total
    assert fake.sample_id_range == (FIRST_ID, FIRST_ID + 7_000)
    signals = dict(zip(FIELDS, profile.signals(0, 7_000), strict=True))
    for buffer in real.buffers.values():
        buffer.active = False
    # The driver hands GPI0 over packed 8 samples a byte; the buffer unpacks it.
    signals["current_lsb"] = np.packbits(signals["current_lsb"], bitorder="little")
    for field, key in FIELD_IDS.items():
        real.buffers[key].active = True
        real.insert(
            "s/data",
            {
                "field_id": key[0],
                "index": key[1],
                "sample_id": FIRST_ID,
                "data": signals[field],
                "sample_rate": 1_000_000,
                "decimate_factor": 1,
            },
        )
    assert real.sample_id_range == fake.sample_id_range
    # Inside, across the start (cut), and past the end (cut to nothing).
    for start, stop in [(10, 4_010), (-100, 20), (6_990, 7_500), (7_200, 7_300)]:
        a, b = FIRST_ID + start, FIRST_ID + stop
        want = real.samples_get(a, b, fields=FIELDS)
        got = fake.samples_get(a, b, fields=FIELDS)
        assert got["time"]["sample_id_range"] == want["time"]["sample_id_range"]
        for field in FIELDS:
            w, g = want["signals"][field], got["signals"][field]
            assert g["units"] == w["units"]
            assert np.array_equal(g["value"], w["value"])
            if len(w["value"]):  # the real buffer gives an empty range as []
                assert np.asarray(g["value"]).dtype == w["value"].dtype
