"""The JS220 client against the fake joulescope module replaying a known profile: energy per
inference through the official scoring equals the profile's analytic value to far below a
microjoule; events, short bins, lost data, the reader thread's life, device discovery."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest

from agent import js220_client
from agent.energy_monitor import MonitorTarget, open_monitor, window_energy
from agent.js220_client import (
    PARAMETERS,
    EdgeTimeout,
    Js220Client,
    MonitorUnavailable,
    pick_js220,
)
from farm.scoring.energy import energy_window, score_energy
from tests import fake_joulescope
from tests.fake_joulescope import FakeDevice, Level, Scripted

# Levels exact in float32 (as the device reports them), so the analytic values need no
# rounding: 1.796875 V, 0.48828125 mA idle, 11.71875 mA busy.
VOLTS = 115 / 64
IDLE_A = 2**-11
BUSY_A = 3 / 256
#: Raw samples per read of the buffer's range: prime, so edges fall anywhere in a chunk.
CHUNK = 9_973
SERIAL = "000415"


@dataclass(frozen=True)
class Batch:
    """One ``infer N``: ``busy`` raw samples per inference at the busy current, ``gap`` idle
    samples after each, bracketed by 1 ms low pulses of the timestamp pin."""

    n: int
    busy: int
    gap: int


def profile_levels(batches: list[Batch], download: int = 123_457) -> list[Level]:
    """Idle (the download), then per batch: a 1 ms low pulse (its rising edge starts the
    window), 500 idle samples, the inferences, a 1 ms low pulse (its rising edge ends it),
    idle until the next batch."""
    levels = [Level(download, IDLE_A, VOLTS, 1)]
    for batch in batches:
        levels.append(Level(1_000, IDLE_A, VOLTS, 0))
        levels.append(Level(500, IDLE_A, VOLTS, 1))
        for _ in range(batch.n):
            levels.append(Level(batch.busy, BUSY_A, VOLTS, 1))
            levels.append(Level(batch.gap, IDLE_A, VOLTS, 1))
        levels.append(Level(1_000, IDLE_A, VOLTS, 0))
        levels.append(Level(54_321, IDLE_A, VOLTS, 1))
    return levels


def analytic_window_j(batch: Batch, raw_samples: int) -> float:
    """The official window is the raw samples after the first rising edge up to and
    including the second: the batch's busy samples at the busy current, the rest idle."""
    busy = batch.n * batch.busy
    return VOLTS * (busy * BUSY_A + (raw_samples - busy) * IDLE_A) / 1e6


def runner_bins(segment: int) -> int:
    """Bins a stretch of raw samples ending at an edge yields: full bins and a short one."""
    return math.ceil(segment / 1000)


@pytest.fixture
def batches() -> list[Batch]:
    return [Batch(n=20, busy=7_300, gap=250), Batch(n=15, busy=9_100, gap=0)]


@pytest.fixture
def device(batches: list[Batch]) -> FakeDevice:
    return FakeDevice(SERIAL, Scripted(profile_levels(batches), chunk=CHUNK))


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch, device: FakeDevice) -> AsyncIterator[Js220Client]:
    fake_joulescope.install(monkeypatch, device)
    js = await Js220Client.open(SERIAL)
    try:
        yield js
    finally:
        await js.close()


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("js220-reader")]


def event_bins(edges: list[int]) -> list[int]:
    """Where each event lands in the acquisition's bins, by the runner's rule: the raw
    samples up to and including an edge close into full bins and one short bin."""
    out: list[int] = []
    for n, edge in enumerate(edges):
        before = edges[n - 1] + 1 if n else 0
        out.append((out[-1] if out else 0) + runner_bins(edge + 1 - before))
    return out


async def test_energy_per_inference_equals_the_analytic_value(
    client: Js220Client, device: FakeDevice, batches: list[Batch]
) -> None:
    profile = device.profile
    assert isinstance(profile, Scripted)
    edges = profile.rising_edges()
    assert len(edges) == 2 * len(batches)
    positions = event_bins(edges)
    await client.configure(1800)
    assert device.parameters == dict(PARAMETERS)
    await client.start()
    windows = []
    for k in range(len(batches)):
        # The DUT's next batch has not run before the runner drains this one.
        profile.limit = edges[2 * k + 1] + 5_000
        windows.append(await client.window(events=2))
    await client.stop()

    trials = []
    first = 0
    for k, (batch, window) in enumerate(zip(batches, windows, strict=True)):
        a, b = edges[2 * k], edges[2 * k + 1]
        (n0, i0), (n1, i1) = window.events
        assert (n0, n1) == (2 * k, 2 * k + 1)  # numbered from 00 in the acquisition
        assert window.first_sample == first
        assert [window.first_sample + i0, window.first_sample + i1] == positions[2 * k : 2 * k + 2]
        # One short bin per event: the window has less than one bin more than its ms.
        assert 0 <= (i1 - i0) - (b - a) / 1000 < 1
        trial = energy_window(window.samples, window.events, batch.n, trial=k)
        expected = analytic_window_j(batch, b - a)
        assert trial.nan_samples == 0
        assert trial.energy_j == pytest.approx(expected, rel=1e-12, abs=0)
        assert abs(trial.energy_per_inference_j - expected / batch.n) < 1e-12  # 1e-6 µJ
        assert trial.lines()[-1] == f"  Energy/Inf    : {expected / batch.n * 1e6:.3f} uJ/inf"
        assert window_energy(window).energy_j == pytest.approx(expected, rel=1e-12)
        trials.append(trial)
        first += len(window.samples)
    per_inference = [
        analytic_window_j(batch, edges[2 * k + 1] - edges[2 * k]) / batch.n
        for k, batch in enumerate(batches)
    ]
    result = score_energy(trials, required_windows=len(batches))
    assert result.median_energy_per_inference_j == pytest.approx(
        float(np.median(per_inference)), rel=1e-12
    )


async def test_full_bins_hold_a_millisecond_of_energy(
    client: Js220Client, device: FakeDevice
) -> None:
    profile = device.profile
    assert isinstance(profile, Scripted)
    edge = profile.rising_edges()[0]
    await client.configure(1800)
    await client.start()
    window = await client.window(events=1)
    idle_bin = VOLTS * IDLE_A * 1000 / 1e6
    # The download: whole idle milliseconds, then the bin the first edge cuts short (it
    # holds the edge's own sample), then the event.
    full = (edge + 1) // 1000
    assert window.samples[:full] == pytest.approx([idle_bin] * full, rel=1e-13)
    assert window.samples[full] == pytest.approx(idle_bin * ((edge + 1) % 1000) / 1000, rel=1e-12)
    assert window.events[0] == (0, full + 1)


async def test_a_failed_fetch_is_counted_and_its_window_scores_nan(
    client: Js220Client, device: FakeDevice, batches: list[Batch]
) -> None:
    profile = device.profile
    assert isinstance(profile, Scripted)
    a, b = profile.rising_edges()[:2]
    await client.configure(1800)
    await client.start()
    assert device.stream_buffer is not None
    # A fetch inside the first window fails; one in the second window's download too.
    device.stream_buffer.fail_samples = range(a + 40_000, a + 40_001)
    profile.limit = b + 5_000
    first = await client.window(events=2)
    assert client.fetch_errors == 1
    [(start, stop)] = device.stream_buffer.failed
    assert client.lost_samples == stop - start == CHUNK
    nan_bins = [i for i, v in enumerate(first.samples) if math.isnan(v)]
    (_, i0), (_, i1) = first.events
    assert nan_bins and all(i0 <= i < i1 for i in nan_bins)
    # The lost samples keep their place: the window is as long as without the failure.
    assert i1 - i0 == runner_bins(b - a)
    trial = energy_window(first.samples, first.events, batches[0].n)
    assert math.isnan(trial.energy_j) and trial.nan_samples == len(nan_bins)
    result = score_energy([trial], required_windows=1)
    assert not result.valid
    assert (
        f"trial 0: {len(nan_bins)} unreadable or lost sample(s): energy is NaN" in result.problems
    )

    c, d = profile.rising_edges()[2:4]
    device.stream_buffer.fail_samples = range(b + 20_000, b + 20_001)  # before edge c
    profile.limit = profile.total
    second = await client.window(events=2)
    assert client.fetch_errors == 2
    clean = energy_window(second.samples, second.events, batches[1].n)
    assert clean.nan_samples == 0
    assert clean.energy_j == pytest.approx(analytic_window_j(batches[1], d - c), rel=1e-12)


async def test_an_overrun_ring_buffer_loses_samples_as_nan(
    monkeypatch: pytest.MonkeyPatch, batches: list[Batch]
) -> None:
    profile = Scripted(profile_levels(batches), chunk=120_000)
    device = FakeDevice(SERIAL, profile, capacity=50_000)
    fake_joulescope.install(monkeypatch, device)
    async with await Js220Client.open(None) as js:
        await js.configure(1800)
        await js.start()
        with pytest.raises(EdgeTimeout, match="raw samples were lost in this window"):
            # Every read jumps 120,000 samples ahead of a 50,000-sample buffer: the edges
            # fall into the overwritten stretches.
            await js.window(events=4, timeout_s=0.5)
        assert js.lost_samples >= 70_000 and js.fetch_errors == 0
        assert js.lost_samples % 70_000 == 0  # each read overran by 120,000 - 50,000
        window = js.drain()
        nan_bins = sum(1 for v in window.samples if math.isnan(v))
        assert (
            js.lost_samples / 1000
            <= nan_bins
            <= js.lost_samples / 1000 + 2 * (js.lost_samples // 70_000)
        )


async def test_stop_ends_the_reader_and_every_call_is_off_the_loop(
    client: Js220Client, device: FakeDevice
) -> None:
    await client.configure(1800)
    await client.start()
    assert len(readers()) == 1
    await client.window(events=2)
    await client.stop()
    assert readers() == []
    assert not client.acquiring
    await client.stop()  # idempotent
    await client.close()
    assert not device.is_open
    loop_thread = threading.current_thread().name
    names = [c.split("@")[0].split()[0] for c in device.calls]
    assert names[:2] == ["open", "parameter_set"] and names[-3:] == ["stop", "close", "stop"]
    assert all(not c.endswith("@" + loop_thread) for c in device.calls)


async def test_a_hung_device_call_fails_within_its_deadline(
    monkeypatch: pytest.MonkeyPatch, client: Js220Client, device: FakeDevice
) -> None:
    monkeypatch.setattr(js220_client, "CALL_TIMEOUT_S", 0.2)
    device.hang.add("start")
    try:
        async with asyncio.timeout(2):
            with pytest.raises(MonitorUnavailable, match=r"start did not return within 0\.2 s"):
                await client.start()
        assert readers() == []
    finally:
        device.release.set()


async def test_a_device_that_stops_on_its_own_fails_the_window(
    client: Js220Client, device: FakeDevice
) -> None:
    profile = device.profile
    assert isinstance(profile, Scripted)
    profile.limit = 1_000
    await client.configure(1800)
    await client.start()
    device.stop_on_error(7, "USB disconnect")
    with pytest.raises(MonitorUnavailable, match=r"stopped streaming \(status 7: USB disconnect\)"):
        await client.window(events=2)


async def test_a_window_without_edges_times_out_with_a_hint(
    client: Js220Client, device: FakeDevice
) -> None:
    profile = device.profile
    assert isinstance(profile, Scripted)
    profile.limit = 100_000  # the download only: no edge yet
    await client.configure(1800)
    await client.start()
    with pytest.raises(EdgeTimeout, match=r"0 of 2 timestamp-pin edges within 0\.3 s: is GPI0"):
        await client.window(timeout_s=0.3)


def test_pick_js220_names_what_is_connected() -> None:
    profile = Scripted([], chunk=1)
    a, b = FakeDevice("000415", profile), FakeDevice("000777", profile)
    js110 = FakeDevice("001122", profile, model="js110")
    assert pick_js220([a], None) is a
    assert pick_js220([js110, a, b], "000777") is b
    with pytest.raises(MonitorUnavailable, match=r"^2 JS220s \(16D0:10BA\) connected; .*-000777"):
        pick_js220([a, b], None)
    with pytest.raises(
        MonitorUnavailable, match=r"^no JS220 \(16D0:10BA\) connected; Joulescopes: JS110-001122$"
    ):
        pick_js220([js110], None)
    with pytest.raises(
        MonitorUnavailable, match=r"no JS220 .* with serial 123; Joulescopes: JS220-000415$"
    ):
        pick_js220([a], "123")


async def test_open_monitor_opens_a_js220_by_serial(
    monkeypatch: pytest.MonkeyPatch, device: FakeDevice
) -> None:
    fake = fake_joulescope.install(monkeypatch, device, FakeDevice("000999", device.profile))
    monitor = await open_monitor(MonitorTarget.parse(f"js220:{SERIAL}"))
    try:
        assert isinstance(monitor, Js220Client) and monitor.device is device
        assert device.is_open and fake.scan_configs == ["auto"]
    finally:
        await monitor.close()
    with pytest.raises(MonitorUnavailable, match="2 JS220s"):
        await open_monitor(MonitorTarget.parse("js220"))


async def test_without_the_package_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "joulescope", None)
    with pytest.raises(MonitorUnavailable, match=r"pip install 'tinyfarm\[js220\]'"):
        await Js220Client.open(None)


def test_monitor_target_parses_the_run_option() -> None:
    assert MonitorTarget.parse("js220") == MonitorTarget("js220", None)
    assert MonitorTarget.parse("JS220:000415") == MonitorTarget("js220", "000415")
    assert MonitorTarget.parse("/dev/ttyACM2") == MonitorTarget("lpm01a", "/dev/ttyACM2")


async def test_an_empty_buffer_before_the_first_data_loses_nothing(
    client: Js220Client, device: FakeDevice
) -> None:
    """The package reports (0, 0) until data comes; the ids then start far from 0."""
    profile = device.profile
    assert isinstance(profile, Scripted)
    profile.limit = 0
    await client.configure(1800)
    await client.start()
    await asyncio.sleep(0.05)  # the reader polls the empty buffer meanwhile
    assert device.stream_buffer is not None and device.stream_buffer.sample_id_range == (0, 0)
    profile.limit = profile.total
    window = await client.window(events=2)
    assert client.lost_samples == 0 and window.events[0] == (
        0,
        event_bins(profile.rising_edges())[0],
    )
