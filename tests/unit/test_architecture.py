"""The dependency direction of the layers holds: ``farm`` imports neither ``agent`` nor
``controller`` (except the CLI, lazily, inside commands); ``agent`` and ``controller`` never
import each other nor any simulator code (``farm.sim``, the device-side
``farm.protocol.*_firmware`` modules); the sans-IO protocol layer imports no I/O module, and
its host-side modules no device-side one."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, by full dotted name (``from a import b``
    counts as both ``a`` and ``a.b``, since ``b`` may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def is_simulator_code(module: str) -> bool:
    """True for the simulator and the device-side protocol modules it runs."""
    return (
        module == "farm.sim"
        or module.startswith("farm.sim.")
        or (module.startswith("farm.protocol.") and module.endswith("_firmware"))
    )


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


@pytest.mark.parametrize(
    "path", sources("agent") + sources("controller"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_agent_and_controller_load_no_simulator_code(path: Path) -> None:
    # A Raspberry Pi agent must not carry the device emulations it never runs.
    assert not {m for m in imported_modules(path) if is_simulator_code(m)}


def test_agent_loads_no_simulator_code_transitively() -> None:
    # The per-file test above misses an import through a third module; this imports every
    # agent module in a fresh interpreter and looks at what got loaded.
    probe = (
        "import importlib, pkgutil, sys, agent\n"
        "for m in pkgutil.iter_modules(agent.__path__):\n"
        "    importlib.import_module('agent.' + m.name)\n"
        "print('\\n'.join(sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "agent.service" in loaded
    assert not [m for m in loaded if is_simulator_code(m)]


@pytest.mark.parametrize(
    "path",
    [p for p in sources("farm/protocol") if not p.stem.endswith("_firmware")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_protocol_host_side_imports_no_device_side(path: Path) -> None:
    assert not {m for m in imported_modules(path) if is_simulator_code(m)}


def test_simulator_code_is_recognised() -> None:
    # The tests above pass vacuously if the predicate never matches anything.
    assert is_simulator_code("farm.protocol.dut_firmware")
    assert is_simulator_code("farm.sim.config")
    assert not is_simulator_code("farm.protocol.dut")
    assert not is_simulator_code("farm.simctl_cli")
    assert "farm.protocol.lpm01a_firmware" in imported_modules(ROOT / "farm/sim/lpm01a.py")
