"""The ground floor (metricgold_engine.core) imports neither torch nor Pillow: Blender's Python ships neither."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ENGINE = REPO_ROOT / "metricgold_engine"
CORE = ENGINE / "core"

BLOCKED_IMPORT = r"""
import importlib, importlib.abc, pkgutil, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "PIL", "diffusers", "transformers", "safetensors", "OpenEXR", "bpy"}:
            raise ImportError(f"blocked {name}")
sys.meta_path.insert(0, Block())
import metricgold_engine.core as core
names = sorted(m.name for m in pkgutil.iter_modules(core.__path__))
for name in names:
    importlib.import_module(f"metricgold_engine.core.{name}")
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "PIL"})
assert not leaked, leaked
print(" ".join(names))
"""


def test_every_core_module_imports_with_torch_and_pil_blocked():
    out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    imported = set(out.stdout.split())
    on_disk = {p.stem for p in CORE.glob("*.py")} - {"__init__"}
    assert imported == on_disk and {"client", "protocol", "errors", "geometry", "depth_io"} <= imported


def test_the_blocker_would_catch_a_torch_import(tmp_path):
    # The test above must be able to fail: the same blocker refuses a module that imports torch.
    pkg = tmp_path / "metricgold_engine"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "bad.py").write_text("import torch\n")
    out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "blocked torch" in out.stderr


def _module_imports(path: Path, package: str) -> set[str]:
    """Absolute names of the metricgold_engine modules that ``path`` imports (at any level of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("metricgold_engine"))
    return found


def _engine_graph() -> dict[str, set[str]]:
    modules = {}
    for path in ENGINE.rglob("*.py"):
        rel = path.relative_to(REPO_ROOT).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        name = ".".join(parts)
        package = name if is_pkg else ".".join(parts[:-1])
        modules[name] = (path, package)
    graph = {}
    for name, (path, package) in modules.items():
        graph[name] = {m for m in _module_imports(path, package) if m in modules and m != name}
    return graph


def test_imports_run_one_way():
    """No module imports one that imports it back (directly or through others), and core imports only core."""
    graph = _engine_graph()
    for name, deps in graph.items():
        if name.startswith("metricgold_engine.core"):
            outside = {d for d in deps if not d.startswith("metricgold_engine.core")}
            assert not outside, f"{name} (ground floor) imports {outside}"
    # The package root only names lazy targets (strings), so every module may import it; leave it out of cycles.
    edges = {n: {d for d in ds if d != "metricgold_engine"} for n, ds in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in edges.get(node, ()):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert "metricgold_engine.pipeline" in edges["metricgold_engine.checkpoint"]  # the graph is really built
