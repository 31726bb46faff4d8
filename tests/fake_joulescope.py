"""A fake of the ``joulescope`` package (its v1 API, as the JS220 client uses it): the one mock
the tests allow, because the JS220 is a USB-only device.

It offers ``scan``/``scan_require_one`` returning :class:`FakeDevice` objects with the real
device's ``open``, ``parameter_set``, ``start``, ``stop``, ``close``, ``info``,
``device_path``, ``serial_number`` and ``stream_buffer``; the stream buffer has the real one's
``sample_id_range`` (start inclusive, end exclusive, in 1 MS/s sample ids that do not start
at 0) and ``samples_get(start, stop, fields=...)`` returning ``{"time": ..., "signals":
{field: {"value": array, "units": ...}}}`` for the part of ``[start, stop)`` it holds, as the
real one does, or raising ValueError where a test makes a fetch fail (the real one's
``get_range`` can). The buffered range grows in chunks, like the USB transfers that fill the
real buffer, from a :class:`Profile`: a scripted one with known levels (:class:`Scripted`),
or one that follows a simulated board's power model and timestamp pin in real time
(:class:`Live`). ``install`` puts the module in ``sys.modules`` for one test.

tests/unit/test_js220_fake.py checks this surface against the real package.
"""

from __future__ import annotations

import bisect
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pytest

from farm.sim.power import GpioLine, PowerModel

#: The values the real package accepts for the parameters the client sets (its
#: ``joulescope.parameters_v1`` options, by name and by value).
ALLOWED: dict[str, set[object]] = {
    "source": {"off", "raw", "pattern_usb", "pattern_control", "pattern_sensor"},
    "sensor_power": {"off", "on", 0, 1},
    "sampling_frequency": {
        *(2_000_000, 1_000_000, 500_000, 200_000, 100_000, 50_000, 20_000, 10_000),
        *(5_000, 2_000, 1_000, 500, 200, 100, 50, 20, 10, "auto", None, "default"),
    },
    "io_voltage": {"1.8V", "2.1V", "2.5V", "2.7V", "3.0V", "3.3V", "3.6V", "5.0V"},
    "trigger_source": {"auto", "gpi0", "gpi1"},
    "current_lsb": {"normal", "gpi0", "gpi1"},
    "voltage_lsb": {"normal", "gpi0", "gpi1"},
}
UNITS = {"current": "A", "voltage": "V", "power": "W", "current_lsb": "", "voltage_lsb": ""}

Signals = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.uint8]]


class Profile(Protocol):
    """Where a fake JS220's samples come from: ``produced()`` raw samples exist so far
    (numbered from 0), ``signals(a, b)`` are samples ``[a, b)``: current (A), voltage (V)
    and GPI0 (0/1)."""

    def begin(self) -> None:
        """Streaming starts (sample 0 is now)."""
        ...

    def produced(self) -> int: ...

    def signals(self, start: int, stop: int) -> Signals: ...


@dataclass(frozen=True)
class Level:
    """A stretch of ``samples`` raw samples at constant current, voltage and GPI0."""

    samples: int
    current_a: float
    voltage_v: float
    gpi0: int


class Scripted:
    """Known levels, released ``chunk`` samples more each time the buffer's range is read
    (so the reader sees them arrive in pieces, edges anywhere in a piece), up to ``limit``
    (the test moves it on as the DUT's next ``infer`` would)."""

    def __init__(self, levels: Iterable[Level], *, chunk: int) -> None:
        self.levels = list(levels)
        self.chunk = chunk
        self.total = sum(level.samples for level in self.levels)
        self.limit = self.total
        self._bounds = np.cumsum([0, *(level.samples for level in self.levels)])
        self._released = 0

    def begin(self) -> None:
        self._released = 0

    def produced(self) -> int:
        self._released = min(self.limit, self.total, self._released + self.chunk)
        return self._released

    def signals(self, start: int, stop: int) -> Signals:
        which = np.searchsorted(self._bounds, np.arange(start, stop), side="right") - 1
        current = np.array([lv.current_a for lv in self.levels], dtype=np.float32)[which]
        voltage = np.array([lv.voltage_v for lv in self.levels], dtype=np.float32)[which]
        gpi0 = np.array([lv.gpi0 for lv in self.levels], dtype=np.uint8)[which]
        return current, voltage, gpi0

    def rising_edges(self) -> list[int]:
        """Sample numbers where GPI0 goes from 0 to 1."""
        return [
            int(self._bounds[k])
            for k in range(1, len(self.levels))
            if self.levels[k - 1].gpi0 == 0 and self.levels[k].gpi0 == 1
        ]


class Live:
    """A simulated board measured in real time: sample ``k`` covers ``[t0 + k/f, t0 +
    (k+1)/f)`` of the event-loop clock; its current is the power model's energy over that
    period divided by the period and ``voltage_v``; GPI0 is the timestamp pin's level at the
    period's start. Samples are released ``lag_s`` after their period ends (USB latency), so
    the power model no longer changes under them, ``chunk`` at a time (USB transfers)."""

    def __init__(
        self,
        power: PowerModel,
        gpio: GpioLine,
        *,
        voltage_v: float,
        rate_hz: int = 1_000_000,
        lag_s: float = 0.2,
        chunk: int = 8_192,
    ) -> None:
        self.power = power
        self.voltage_v = voltage_v
        self.rate_hz = rate_hz
        self.lag_s = lag_s
        self.chunk = chunk
        self.t0: float | None = None
        self._edges: list[tuple[float, bool]] = []
        self._initial = gpio.level
        gpio.subscribe(lambda t, level: self._edges.append((t, level)))

    def begin(self) -> None:
        self.t0 = time.monotonic()  # the event loop's clock

    def time_of(self, k: int) -> float:
        """When sample ``k``'s period starts."""
        assert self.t0 is not None
        return self.t0 + k / self.rate_hz

    def sample_of(self, t: float) -> int:
        """The first sample whose period starts at or after ``t``."""
        assert self.t0 is not None
        return int(np.ceil((t - self.t0) * self.rate_hz))

    def produced(self) -> int:
        if self.t0 is None:
            return 0
        due = int((time.monotonic() - self.lag_s - self.t0) * self.rate_hz)
        return max(0, due - due % self.chunk)

    def signals(self, start: int, stop: int) -> Signals:
        assert self.t0 is not None
        # Times relative to t0 keep a µs period exact to ~1e-16 s.
        bounds = np.arange(start, stop + 1, dtype=np.float64) / self.rate_hz
        joules = np.diff(self._energy_to(bounds))
        watts = joules * self.rate_hz
        current = (watts / np.float32(self.voltage_v)).astype(np.float32)
        voltage = np.full(stop - start, self.voltage_v, dtype=np.float32)
        edges = list(self._edges)  # appended by the event loop's thread meanwhile
        times = np.array([t - self.t0 for t, _ in edges])
        levels = np.array([self._initial, *(level for _, level in edges)], dtype=np.uint8)
        gpi0 = levels[np.searchsorted(times, bounds[:-1], side="right")]
        return current, voltage, gpi0

    def _energy_to(self, tau: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Joules the power model drew from ``t0`` to ``t0 + tau``, for each ``tau``."""
        assert self.t0 is not None
        times, watts = list(self.power._times), list(self.power._watts)
        n = min(len(times), len(watts))
        # The draw changes at each point; the piece in force at t0 starts at t0.
        first = max(bisect.bisect_right(times[:n], self.t0) - 1, 0)
        starts = np.array([0.0, *(t - self.t0 for t in times[first + 1 : n])])
        levels = np.array(watts[first:n])
        before = np.concatenate(([0.0], np.cumsum(levels[:-1] * np.diff(starts))))
        piece = np.searchsorted(starts, tau, side="right") - 1
        return before[piece] + levels[piece] * (tau - starts[piece])


class FakeStreamBuffer:
    """The device's ring buffer of the last ``capacity`` samples, ids from ``first_id``."""

    def __init__(self, profile: Profile, *, first_id: int, capacity: int) -> None:
        self.profile = profile
        self.first_id = first_id
        self.capacity = capacity
        self._range = (0, 0)
        self.fetches = 0
        self.fail_samples = range(0)
        """Profile samples whose fetch fails (ValueError, as the real buffer's can)."""
        self.failed: list[tuple[int, int]] = []
        """The ``[start, stop)`` sample ids of each failed fetch."""

    @property
    def sample_id_range(self) -> tuple[int, int]:
        produced = self.profile.produced()
        end = self.first_id + produced
        # Before its first data the real buffer says (0, 0), not where its ids will start.
        self._range = (max(self.first_id, end - self.capacity), end) if produced else (0, 0)
        return self._range

    def samples_get(
        self, start: int, stop: int, fields: list[str] | str | None = None
    ) -> dict[str, Any]:
        self.fetches += 1
        lo, hi = start - self.first_id, stop - self.first_id
        doomed = self.fail_samples and lo < self.fail_samples.stop and self.fail_samples.start < hi
        if doomed:
            self.failed.append((start, stop))
            first, end = self._range
            raise ValueError(f"get_range {start}:{stop} out of available range {first}:{end}")
        start, stop = self._clamp(start, stop)
        names = ["current", "voltage", "current_lsb"] if fields is None else list(fields)
        current, voltage, gpi0 = self.profile.signals(start - self.first_id, stop - self.first_id)
        values = {"current": current, "voltage": voltage, "current_lsb": gpi0}
        return {
            "time": {
                "sample_id_range": {"value": [start, stop], "units": "samples"},
                "samples": {"value": stop - start, "units": "samples"},
                "sampling_frequency": {"value": 1_000_000, "units": "Hz"},
            },
            "signals": {name: {"value": values[name], "units": UNITS[name]} for name in names},
        }

    def _clamp(self, start: int, stop: int) -> tuple[int, int]:
        """As the real buffer: a request beyond what it holds is cut, not refused."""
        first, end = self._range
        start, stop = max(start, first), min(stop, end)
        if start >= end:
            start = stop = max(first, end - 1)
        elif stop < first:
            start = stop = first
        elif start > stop:
            stop = start
        return start, stop


@dataclass
class FakeDevice:
    """A JS220 (or a JS110, by ``model``) the fake driver lists."""

    serial_number: str
    profile: Profile
    model: str = "js220"
    first_id: int = 7_340_032
    capacity: int = 30_000_000
    is_open: bool = False
    stream_buffer: FakeStreamBuffer | None = None
    parameters: dict[str, object] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    """Every API call, in order, with the thread it came from."""
    hang: set[str] = field(default_factory=set)
    """Calls that do not return (a wedged USB driver) until ``release`` is set."""
    release: threading.Event = field(default_factory=threading.Event)
    _stop_fn: Callable[[int, str], None] | None = None
    _streaming: bool = False

    def __str__(self) -> str:
        return f"{self.model.upper()}-{self.serial_number}"

    @property
    def device_path(self) -> str:
        return f"u/{self.model}/{self.serial_number}"

    def _call(self, name: str) -> None:
        self.calls.append(f"{name}@{threading.current_thread().name}")
        if name.split()[0] in self.hang:
            self.release.wait(30)

    def open(
        self, event_callback_fn: object = None, mode: object = None, timeout: object = None
    ) -> None:
        self._call("open")
        self.is_open = True
        self.stream_buffer = FakeStreamBuffer(
            self.profile, first_id=self.first_id, capacity=self.capacity
        )

    def parameter_set(self, name: str, value: object) -> None:
        self._call(f"parameter_set {name}={value}")
        if name not in ALLOWED:
            raise KeyError(name)
        if value not in ALLOWED[name]:
            raise ValueError(f"value {value} not allowed for parameter {name}")
        self.parameters[name] = value

    def start(
        self,
        stop_fn: Callable[[int, str], None] | None = None,
        duration: object = None,
        contiguous_duration: object = None,
    ) -> None:
        self._call("start")
        if self.stream_buffer is None:
            raise AttributeError("'NoneType' object has no attribute 'reset'")  # as the real
        self._stop_fn = stop_fn
        self._streaming = True
        self.profile.begin()

    def stop(self) -> bool:
        self._call("stop")
        if not self._streaming:
            return False
        self._streaming = False
        fn, self._stop_fn = self._stop_fn, None
        if fn is not None:
            fn(0, "")
        return True

    def stop_on_error(self, status: int, message: str) -> None:
        """Stop streaming as the device does by itself on an error: the stop callback hears
        it (from the driver's thread in the real package)."""
        self._streaming = False
        fn, self._stop_fn = self._stop_fn, None
        if fn is not None:
            fn(status, message)

    def close(self, timeout: object = None) -> None:
        self._call("close")
        self.stop()
        self.is_open = False
        self.stream_buffer = None

    def info(self) -> dict[str, Any]:
        return {"type": "info", "ver": 2, "model": self.model, "serial_number": self.serial_number}


def module(devices: list[FakeDevice]) -> types.ModuleType:
    """A ``joulescope`` module whose driver lists ``devices``."""
    fake = types.ModuleType("joulescope")
    fake.__version__ = "1.5.0"  # type: ignore[attr-defined]
    fake.devices = devices  # type: ignore[attr-defined]
    fake.scan_configs = []  # type: ignore[attr-defined]

    def scan(name: str | None = None, config: str | None = None) -> list[FakeDevice]:
        fake.scan_configs.append(config)  # type: ignore[attr-defined]
        return sorted(devices, key=str)

    def scan_require_one(name: str | None = None, config: str | None = None) -> FakeDevice:
        found = scan(name, config)
        if not found:
            raise RuntimeError("no devices found")
        if len(found) > 1:
            raise RuntimeError("multiple devices found")
        return found[0]

    fake.scan = scan  # type: ignore[attr-defined]
    fake.scan_require_one = scan_require_one  # type: ignore[attr-defined]
    return fake


def install(monkeypatch: pytest.MonkeyPatch, *devices: FakeDevice) -> types.ModuleType:
    """Make ``import joulescope`` give the fake listing ``devices`` for this test."""
    fake = module(list(devices))
    monkeypatch.setitem(sys.modules, "joulescope", fake)
    return fake
