"""The package's module-level import graph has no cycles and keeps its layering.

Module-level imports are the ``import`` statements that run when a module is imported (at the top level,
or inside a top-level ``if``/``try``/class body); imports inside functions run on use and are allowed to
point upwards (e.g. ``SessaConfig.from_preset`` forwarding to ``sessa.models.presets``).
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import sessa

ROOT = Path(sessa.__file__).parent
LEAVES = ("sessa.validation", "sessa.tokens", "sessa.registry")  # import nothing else from the package


def _modules() -> dict[str, Path]:
    found = {"sessa": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="sessa."):
        spec = importlib.util.find_spec(info.name)
        found[info.name] = Path(spec.origin)
    return found


def _module_level_imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The sessa modules that importing ``name`` imports directly."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
            elif isinstance(node, (ast.If, ast.Try, ast.ClassDef, ast.With)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []) or [])
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return {t for t in targets if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _module_level_imports(path, name, modules) for name, path in modules.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    assert len(graph) > 50 and "sessa.registry" in graph and "sessa.models.presets" in graph
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_layering() -> None:
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("sessa.ops"):
            outside = {t for t in targets if not t.startswith("sessa.ops")}
            assert not outside, f"{name} imports {sorted(outside)}: sessa.ops imports nothing else"
        if name in LEAVES:
            assert not targets - set(LEAVES), f"{name} is a leaf but imports {sorted(targets)}"
        if name.startswith(("sessa.models", "sessa.tasks")):
            other = "sessa.tasks" if name.startswith("sessa.models") else "sessa.models"
            wrong = {t for t in targets if t.startswith(other)}
            assert not wrong, f"{name} imports {sorted(wrong)}: models and tasks share sessa.tokens instead"
    config = graph["sessa.models.configuration"]  # data only: no models, modules or baselines
    above = ("sessa.models.", "sessa.modules", "sessa.baselines")
    assert not {t for t in config if t.startswith(above)}, f"the config imports {sorted(config)}"


def test_every_module_imports_on_its_own() -> None:
    """Each module imports in a fresh interpreter (no hidden order dependence, no optional package needed
    at import time beyond those installed)."""
    names = sorted(n for n in _modules() if n != "sessa.__main__")
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    subprocess.run([sys.executable, "-c", code, *names], check=True, timeout=300)
