"""The layout's rules, checked on the source: module size, no import cycles, private modules stay private,
the core names no pass or backend module, and the wheel installs every subpackage."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE_DIRS = {"converter": ROOT / "converter", "converter.passes": ROOT / "passes", "converter.plugins": ROOT / "plugins"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    out = {}
    for prefix, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None), for every import executed at run time."""
    tree = ast.parse(MODULES[name].read_text())
    skip = _type_checking_lines(tree)
    package = name if _is_package(name) else name.rpartition(".")[0]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", 0) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out += [(base, a.name) for a in node.names]
    return [(m, n) for m, n in out if m == "converter" or m.startswith("converter.")]


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name in MODULES:
        for module, item in _imports(name):
            target = f"{module}.{item}" if item and f"{module}.{item}" in MODULES else module
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def test_no_module_over_400_lines() -> None:
    sources = [*MODULES.values(), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("examples/*.py"), *ROOT.glob("tools/*.py")]
    long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycle() -> None:
    graph = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def _owner(private_module: str) -> str:
    """The package a private module (or a module holding a private name) belongs to."""
    parts = private_module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return private_module.rpartition(".")[0]


def test_private_names_stay_in_their_package() -> None:
    bad = []
    for name in MODULES:
        for module, item in _imports(name):
            full = f"{module}.{item}" if item and f"{module}.{item}" in MODULES else module
            if any(p.startswith("_") and not p.startswith("__") for p in full.split(".")):
                owner = _owner(full)
                if not (name == owner or name.startswith(owner + ".")):
                    bad.append(f"{name} imports {full}")
            if item and item.startswith("_") and not item.startswith("__") and full == module:
                owner = module if _is_package(module) else module.rpartition(".")[0]
                if not (name == owner or name.startswith(owner + ".")):
                    bad.append(f"{name} imports {item} from {module}")
    assert not bad, "private modules/names used outside their package:\n" + "\n".join(bad)


def test_core_names_no_pass_or_backend_module() -> None:
    core = [m for m, p in MODULES.items() if p.is_relative_to(ROOT / "converter")]
    bad = [f"{m} imports {mod}" for m in core for mod, _ in _imports(m) if mod.startswith(("converter.passes", "converter.plugins"))]
    assert not bad, "the core imports passes or backends by name:\n" + "\n".join(bad)
    text = (ROOT / "converter" / "plugin_manager.py").read_text()
    assert "converter.passes." not in text and "converter.plugins." not in text


@pytest.mark.slow
def test_wheel_installs_every_module(tmp_path: Path) -> None:
    """Build the wheel as users get it, install it into an empty folder and import every module from there."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    wheel = next(wheels.glob("converter-*.whl"))
    listed = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    expected = {"/".join(m.split(".")) + ("/__init__.py" if _is_package(m) else ".py") for m in MODULES}
    assert not expected - listed, f"missing from the wheel: {sorted(expected - listed)}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    code = (
        "import importlib, sys, converter; "
        f"assert converter.__file__.startswith({str(target)!r}), converter.__file__; "
        f"[importlib.import_module(m) for m in {sorted(MODULES)!r}]; "
        "from converter.plugin_manager import load_plugins; p = load_plugins(entry_points_enabled=False); "
        "print(len(p.passes.names()), len(p.backends.names()), len(p.commands.names()))"
    )
    res = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    passes, backends, commands = map(int, res.stdout.split())
    assert passes >= 7 and backends >= 3 and commands >= 8
