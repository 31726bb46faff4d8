"""``farm compare`` on nightly sweeps of simulated boards, every part real
(tests/integration/controller_lab.py): identical nights raise no alarm; a board made 3 %
slower, one whose energy rises 5 % and one that gets one more sample wrong are each worse,
on the right metric.

The boards are seeded with a fixed inference time (spread 0) and a counter started at 10**9
µs (a performance window holds the print of its first lap line, whose length is the counter's
digit count), so identical boards give identical numbers night after night (see
tests/chaos/sweep.py); the noise model's floor is what stands between them and an alarm. The
injected night restarts the boards' simulator with the changed settings."""

from __future__ import annotations

import json

import pytest

from controller import keys
from tests.integration.compare_data import by_metric
from tests.integration.controller_lab import ControllerLab
from tests.integration.farm_procs import agent_proc, start_sim, wait_until

AGENT = "pi-a"
#: Short windows, a short latency phase of 100 queries (enough for the early-stopping p90).
OPTIONS = json.dumps(
    {
        "min_window_s": 0.5,
        "calibration_s": 0.2,
        "min_duration_s": 1.0,
        "min_queries": 100,
        "latency_inputs": 2,
    }
)
SAMPLES = 10
CLOCK_START_US = 10**9
MEDIAN_S = 0.003


def boards_yaml(*, slower: float = 1.0, quality: float = 0.9, energy: float | None = None) -> str:
    """The nightly boards: one to slow down, one to lose a sample, a control; with
    ``energy`` (its active power, W) an energy-wired board too."""
    common = f"clock_start_us: {CLOCK_START_US}"
    text = (
        f"- {{id: b-slow, model: kws01, latency: {{median_s: {MEDIAN_S * slower}, spread: 0}}, "
        f"{common}}}\n"
        f"- {{id: b-acc, model: kws01, quality: {quality}, "
        f"latency: {{median_s: {MEDIAN_S}, spread: 0}}, {common}}}\n"
        f"- {{id: b-same, model: kws01, latency: {{median_s: {MEDIAN_S}, spread: 0}}, "
        f"{common}}}\n"
    )
    if energy is not None:
        text += (
            f"- {{id: b-energy, model: kws01, energy: true, firmware: energy, "
            f"latency: {{median_s: {MEDIAN_S}, spread: 0}}, power: {{active_w: {energy}}}, "
            f"{common}}}\n"
        )
    return text


async def start(lab: ControllerLab, boards: str) -> list[str]:
    await lab.add_agent(AGENT, boards, dataset_limit=SAMPLES)
    await lab.start_controller(workers=4)
    ids = [line.split(",")[0].removeprefix("- {id: ") for line in boards.splitlines()]
    await lab.boards_ready(ids)
    return ids


async def restart_boards(lab: ControllerLab, boards: str, night: int, ids: list[str]) -> None:
    """The simulator and its agent again, with changed boards (the same ids)."""
    await lab.agents[AGENT].stop()
    await lab.sims[AGENT].stop()
    # The boards' retained statuses still say idle: the agent's own state tells the restart.
    await wait_until(lambda: agent_state(lab) != "online", 60, f"{AGENT} offline")
    out = lab.dir / f"sim-{AGENT}-{night}"
    lab.sims[AGENT] = await start_sim(
        out, boards, seed=5, agent=AGENT, broker=lab.broker.url, dataset_limit=SAMPLES
    )
    lab.agents[AGENT] = agent_proc(out, lab.dir / f"agent-{AGENT}-{night}.log")
    await lab.agents[AGENT].start()
    await wait_until(lambda: agent_state(lab) == "online", 60, f"{AGENT} online")
    await lab.boards_ready(ids)


def agent_state(lab: ControllerLab) -> str | None:
    return lab.redis.hget(keys.agent(AGENT), "state")  # type: ignore[return-value]


async def nightly(lab: ControllerLab, modes: str) -> str:
    """One night's sweep, waited for; its id."""
    _, out, _ = await lab.farm(
        "submit",
        "--benchmark",
        "kws",
        "--mode",
        modes,
        "--label",
        "nightly",
        "--options",
        OPTIONS,
        "--wait",
        "--json",
    )
    return str(json.loads(out)["sweep"])


async def verdicts(lab: ControllerLab, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, out, errs = await lab.farm("compare", *args, "--json", check=False)
    assert code in (0, 1), f"{errs}\n{lab.logs()}"
    return code, json.loads(out)


def assert_no_alarm(code: int, doc: dict) -> None:  # type: ignore[type-arg]
    found = {k: m["verdict"] for k, m in by_metric(doc).items()}
    assert code == 0 and set(found.values()) == {"same"}, found


def assert_injected(doc: dict, *, energy: bool) -> None:  # type: ignore[type-arg]
    found = by_metric(doc)
    worse = sorted(k for k, m in found.items() if m["verdict"] == "worse")
    expected = [
        ("b-acc", "accuracy", "top1"),
        ("b-slow", "latency", "p90_early_stop_us"),
        ("b-slow", "latency", "p90_us"),
        ("b-slow", "performance", "throughput_ips"),
    ]
    if energy:
        expected.append(("b-energy", "energy", "energy_uj"))
    assert worse == sorted(expected), {k: (m["verdict"], m["change_pct"]) for k, m in found.items()}
    slow = found[("b-slow", "performance", "throughput_ips")]
    assert slow["change_pct"] == pytest.approx(-100 * 0.03 / 1.03, abs=0.3)
    assert found[("b-slow", "latency", "p90_us")]["change_pct"] == pytest.approx(3, abs=0.3)
    top1 = found[("b-acc", "accuracy", "top1")]
    assert top1["change"] == pytest.approx(-100 / SAMPLES)
    (changed,) = top1["changed_samples"]
    assert changed["correct_before"] is True and changed["correct_after"] is False
    if energy:
        assert found[("b-energy", "energy", "energy_uj")]["change_pct"] == pytest.approx(5, abs=1)


async def test_identical_nights_then_injected_regressions(lab: ControllerLab) -> None:
    """The default suite's cheap variant: two identical nights, then the injected one."""
    modes = "performance,accuracy,latency"
    ids = await start(lab, boards_yaml())
    first = await nightly(lab, modes)
    second = await nightly(lab, modes)
    assert_no_alarm(*await verdicts(lab, second))
    await restart_boards(lab, boards_yaml(slower=1.03, quality=0.8), 3, ids)
    third = await nightly(lab, modes)
    code, doc = await verdicts(lab, third, "--against", "nightly", "--last", "2")
    assert code == 1 and doc["baseline"] == [first, second]
    assert_injected(doc, energy=False)
    # The control board's runs, and the simulator restart, changed nothing recorded.
    same = [r for r in doc["runs"] if r["board"] == "b-same"]
    assert same and all(r["what_changed"] == [] and not r["regressed"] for r in same)


@pytest.mark.slow
async def test_ten_identical_nights_then_injected_regressions_with_energy(
    lab: ControllerLab,
) -> None:
    """Ten identical nights (each compared with the one before: no alarm), then 3 % slower,
    5 % more energy and one sample more wrong, against the last five."""
    modes = "performance,accuracy,latency,energy"
    ids = await start(lab, boards_yaml(energy=0.030))
    sweeps = []
    for _ in range(10):
        sweeps.append(await nightly(lab, modes))
        if len(sweeps) > 1:
            assert_no_alarm(*await verdicts(lab, sweeps[-1]))
    await restart_boards(lab, boards_yaml(slower=1.03, quality=0.8, energy=0.0315), 11, ids)
    injected = await nightly(lab, modes)
    code, doc = await verdicts(lab, injected, "--against", "nightly", "--last", "5")
    assert code == 1 and doc["baseline"] == sweeps[-5:]
    assert_injected(doc, energy=True)
