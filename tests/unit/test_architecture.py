"""The dependency direction of the layers holds: ``farm`` imports neither ``agent`` nor
``controller`` in any form, in any file (the layers add their commands to ``farm`` through
entry points); ``agent`` and ``controller`` never import each other nor any simulator code
(``farm.sim``, the device-side ``farm.protocol.*_firmware`` modules); the sans-IO protocol
layer imports no I/O module, and its host-side modules no device-side one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = frozenset({"agent", "controller"})
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
# Calls that import the module named by their first argument.
IMPORT_CALLS = frozenset({"import_module", "__import__"})


def _imported_by_call(node: ast.Call) -> str | None:
    """The module a call such as ``importlib.import_module("agent.x")`` imports, if it names
    one with a string literal."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in IMPORT_CALLS or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def imported_packages(source: str, package: str) -> set[str]:
    """The top-level package of every module ``source`` imports, wherever the import is: at
    module level, in a function or class, under ``if TYPE_CHECKING:`` or ``try:``, or by name
    through ``importlib.import_module``/``__import__``. ``package`` is the top-level package
    the source belongs to: a relative import stays inside it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(package if node.level else (node.module or "").split(".")[0])
        elif isinstance(node, ast.Call):
            module = _imported_by_call(node)
            if module is not None:
                found.add(module.split(".")[0])
    return found


def imports(path: Path) -> set[str]:
    return imported_packages(path.read_text(), path.relative_to(ROOT).parts[0])


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
    assert not imports(path) & LAYERS


@pytest.mark.parametrize("path", sources("agent"), ids=lambda p: str(p.relative_to(ROOT)))
def test_agent_does_not_import_controller(path: Path) -> None:
    assert "controller" not in imports(path)


@pytest.mark.parametrize("path", sources("farm/protocol"), ids=lambda p: str(p.relative_to(ROOT)))
def test_protocol_layer_is_sans_io(path: Path) -> None:
    assert not imports(path) & IO_MODULES


@pytest.mark.parametrize("path", sources("controller"), ids=lambda p: str(p.relative_to(ROOT)))
def test_controller_does_not_import_agent(path: Path) -> None:
    assert "agent" not in imports(path)


@pytest.mark.parametrize(
    "source, layer",
    [
        ("import agent.config\n", "agent"),
        ("import json, controller\n", "controller"),
        ("from controller.store import connect\n", "controller"),
        ("def f():\n    from agent.probe import probe\n    return probe\n", "agent"),
        ("class C:\n    def m(self):\n        import controller.keys\n", "controller"),
        (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from agent.config import AgentConfig\n",
            "agent",
        ),
        ("try:\n    import agent.serial_link\nexcept ImportError:\n    pass\n", "agent"),
        (
            "import importlib\n\ndef f():\n    importlib.import_module('controller.cli')\n",
            "controller",
        ),
        ("from importlib import import_module\nimport_module('agent')\n", "agent"),
        ("def f():\n    return __import__('controller.sweeps')\n", "controller"),
    ],
)
def test_the_check_sees_every_form_of_import(source: str, layer: str) -> None:
    assert imported_packages(source, "farm") & LAYERS == {layer}


@pytest.mark.parametrize(
    "source",
    [
        "import agentx\nfrom controllers import y\n",
        "from . import agent\nfrom .controller import x\n",  # farm.agent, farm.controller
        "log.info('agent_seen', controller='controller')\n",
        "import importlib\nimportlib.import_module(name)\n",  # not a name the check can know
    ],
)
def test_the_check_flags_only_imports_of_the_layers(source: str) -> None:
    assert not imported_packages(source, "farm") & LAYERS


def test_a_lazy_import_added_to_the_cli_fails_the_check() -> None:
    cli = ROOT / "farm" / "cli.py"
    lazy = "\n\ndef _submit() -> None:\n    from controller.cli import submit\n\n    submit()\n"
    assert not imported_packages(cli.read_text(), "farm") & LAYERS
    assert imported_packages(cli.read_text() + lazy, "farm") & LAYERS == {"controller"}


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in sources("farm") + sources("agent") + sources("controller")
        if not p.is_relative_to(ROOT / "controller" / "reports")
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_the_reports_import_matplotlib(path: Path) -> None:
    # matplotlib is the controller extra's plotting library: neither a Pi nor the core needs
    # it, and the other controller modules stay quick to import without it.
    assert "matplotlib" not in imports(path)


def test_the_reports_do_draw_with_matplotlib() -> None:
    # The test above passes vacuously if the plots moved elsewhere.
    assert "matplotlib" in imports(ROOT / "controller" / "reports" / "plots.py")


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
