"""The undisturbed reference sweep, run once per session, and the recovery figures every
scenario measured, printed at the end of the session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.sweep import RunResult, reference, start_farm
from tests.integration.controller_lab import ControllerLab
from tests.integration.farm_procs import PrivateRedis

FarmFactory = Callable[..., Awaitable[ControllerLab]]

#: (scenario, bound s, measured s) of every scenario that ran.
FIGURES: list[tuple[str, float, float]] = []


@pytest.fixture(scope="session")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], RunResult]:
    """The sweep's results with no fault injected."""
    return reference(Path(tmp_path_factory.mktemp("reference")))


@pytest.fixture
def record_recovery(request: pytest.FixtureRequest) -> Callable[[float, float], None]:
    """Keep a scenario's recovery figures (bound, measured) for the session's summary."""

    def record(bound: float, measured: float) -> None:
        FIGURES.append((request.node.name, bound, measured))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The recovery figures, one line per scenario."""
    if not FIGURES:
        return
    terminalreporter.section("chaos recovery (s)")
    for name, bound, measured in FIGURES:
        terminalreporter.write_line(f"{name}: measured {measured:.1f} bound {bound:.1f}")


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[FarmFactory]:
    """Start the sweep's farm (:func:`tests.chaos.sweep.start_farm`'s options); everything is
    stopped at the end of the test, a private Redis too."""
    started: list[ControllerLab] = []
    servers: list[PrivateRedis] = []

    async def make(*, private_redis: bool = False, **options: Any) -> ControllerLab:
        if private_redis:
            server = PrivateRedis(tmp_path / "redis")
            servers.append(server)
            await server.start()
            options["redis_url"] = server.url
        lab = await start_farm(tmp_path, **options)
        lab.redis_server = servers[-1] if private_redis else None
        started.append(lab)
        return lab

    yield make
    for lab in started:
        await lab.stop()
    for server in servers:
        await server.stop()
