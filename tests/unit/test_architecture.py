"""The dependency direction of DESIGN §2 holds: ``farm`` imports neither ``agent`` nor
``controller`` (except the CLI, lazily, inside commands); ``agent`` and ``controller`` never
import each other; the sans-IO protocol layer imports no I/O module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {
    "asyncio",
    "serial",
    "serial_asyncio_fast",
    "socket",
    "os",
    "select",
    "termios",
    "time",
}


def imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", sources("farm"), ids=lambda p: str(p.relative_to(ROOT)))
def test_farm_does_not_import_agent_or_controller(path: Path) -> None:
    # The CLI modules (*cli.py) reach the other packages only inside commands, so only their
    # top-level imports count.
    found = imports(path, top_level_only=path.name.endswith("cli.py"))
    assert not found & {"agent", "controller"}


@pytest.mark.parametrize("path", sources("agent"), ids=lambda p: str(p.relative_to(ROOT)))
def test_agent_does_not_import_controller(path: Path) -> None:
    assert "controller" not in imports(path, top_level_only=False)


@pytest.mark.parametrize("path", sources("farm/protocol"), ids=lambda p: str(p.relative_to(ROOT)))
def test_protocol_layer_is_sans_io(path: Path) -> None:
    assert not imports(path, top_level_only=False) & IO_MODULES


@pytest.mark.parametrize("path", sources("controller"), ids=lambda p: str(p.relative_to(ROOT)))
def test_controller_does_not_import_agent(path: Path) -> None:
    assert "agent" not in imports(path, top_level_only=False)
