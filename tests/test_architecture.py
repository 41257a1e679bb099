"""The floors hold: no module imports a higher floor, and no import cycle exists, function-level imports included.

Floors, top to bottom (docs/architecture.md): entry points → pipeline → answer and compressors → model cache →
backbones → runtime → base (types, Protocols, video, quant kernels). Imports under `if TYPE_CHECKING:` are
annotations, not imports, and are left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]

#: floor of each module, by longest matching prefix (higher number = higher floor)
FLOORS: dict[str, int] = {
    "videollm": 0,
    "videollm.runtime": 1,
    "videollm.backbones": 2,
    "videollm.encoders": 2,
    "videollm.models": 3,
    "videollm.feature_cache": 3,
    "videollm.answer": 4,
    "videollm.compressors": 4,
    "videollm.pipeline": 5,
    "videollm.config": 5,
    "videollm.cli": 6,
    "videollm.__main__": 6,
    "videollm.serve": 6,
    "videollm.eval": 6,
    "videollm.demo": 6,
    "videollm.quant.cli": 6,
}
FLOOR_NAMES = {0: "base", 1: "runtime", 2: "backbones", 3: "model cache", 4: "answer/compressors", 5: "pipeline",
               6: "entry points"}
#: the package facade is lazy (`__getattr__`), so importing a submodule never runs the rest of the library
FACADE = "videollm"


def package_dirs() -> dict[str, Path]:
    """The import root of each top-level folder, from pyproject's setuptools mapping."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {pkg: ROOT / folder for pkg, folder in cfg["tool"]["setuptools"]["package-dir"].items()
            if "." not in pkg or (ROOT / folder).resolve() != (ROOT / "videollm").resolve()}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg, folder in package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([pkg, *parts])] = path
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that execute: everything except the bodies of `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports at run time, resolved to the most specific module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = [f"{module}.{alias.name}" for alias in node.names]
            candidates = [s for s in subs if s in known] or [module]
            if any(s not in known for s in subs):
                candidates.append(module)
        for target in candidates:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def floor(name: str) -> int:
    best = max((p for p in FLOORS if name == p or name.startswith(p + ".")), key=len)
    return FLOORS[best]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_every_module_has_a_floor_and_the_mapping_matches_pyproject() -> None:
    known = modules()
    for pkg in ("videollm.compressors", "videollm.eval", "videollm.demo", "videollm.runtime"):
        assert pkg in known, pkg
    assert {floor(n) for n in known} == set(FLOOR_NAMES)


def test_no_module_imports_a_higher_floor() -> None:
    upward = sorted(f"{src} ({FLOOR_NAMES[floor(src)]}) imports {dst} ({FLOOR_NAMES[floor(dst)]})"
                    for src, dsts in graph().items() for dst in dsts
                    if dst != FACADE and floor(dst) > floor(src))
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            connect(node)
    assert not cycles, "import cycles:\n" + "\n".join(" ⇄ ".join(c) for c in cycles)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The walk is only worth something if it finds what it forbids."""
    pkg = tmp_path / "videollm"
    (pkg / "runtime").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime" / "__init__.py").write_text("")
    (pkg / "pipeline.py").write_text("")
    (pkg / "runtime" / "loop.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..config import X\n"
        "def f():\n    from .. import pipeline\n    from ..pipeline import run\n")
    known = {"videollm": pkg / "__init__.py", "videollm.runtime": pkg / "runtime" / "__init__.py",
             "videollm.pipeline": pkg / "pipeline.py", "videollm.config": pkg / "config.py",
             "videollm.runtime.loop": pkg / "runtime" / "loop.py"}
    found = imports_of("videollm.runtime.loop", known["videollm.runtime.loop"], known)
    assert found == {"videollm.pipeline"}
    assert floor("videollm.pipeline") > floor("videollm.runtime.loop")
