"""Imports go one way: ``rasterizer`` knows nothing of ``rap`` or ``planners``; in ``rap`` only
the commands layer (the CLI, the agent-spec loader, the demo, the experiments) may import
``planners``; only ``rasterizer/context.py`` creates GL contexts.

The checks read each module's AST, so imports inside functions, ``try`` blocks and
``if TYPE_CHECKING:`` blocks count too, as do ``importlib.import_module("...")`` calls with a
literal name and relative imports (resolved against the module's package).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTEXT_CALLS = {"create_standalone_context", "create_context"}


def module_name(path: Path) -> str:
    """Dotted module name of a file under the repository root (``rap/sources/womd.py`` →
    ``rap.sources.womd``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module a source imports (relative imports resolved)."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                target = ".".join(p for p in (prefix, node.module or "") if p)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" if target else alias.name for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
    return found


def violations(source: str, module: str, forbidden: tuple[str, ...], is_package: bool = False) -> list[str]:
    """Imported modules that are, or are inside, one of the ``forbidden`` top-level packages."""
    return sorted(
        name
        for name in imported_modules(source, module, is_package)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def creates_context(source: str) -> bool:
    """Whether a source calls moderngl's context constructors (``moderngl.create_context(...)``,
    ``mgl.create_standalone_context(...)`` or a name imported from moderngl)."""
    tree = ast.parse(source)
    moderngl_aliases = {"moderngl"}
    direct: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            moderngl_aliases.update(a.asname or a.name for a in node.names if a.name == "moderngl")
        elif isinstance(node, ast.ImportFrom) and node.module == "moderngl":
            direct.update(a.asname or a.name for a in node.names if a.name in CONTEXT_CALLS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in CONTEXT_CALLS and isinstance(f.value, ast.Name) and f.value.id in moderngl_aliases:
                return True
            if isinstance(f, ast.Name) and f.id in direct:
                return True
    return False


def sources(package: str):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    for path in files:
        yield path, path.read_text(encoding="utf-8")


# -- the checker itself ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        "import rap",
        "import rap.scene as scene",
        "import numpy, rap.sources.womd",
        "from rap.scene import Scene",
        "from rap import scene",
        "from planners.agent import Agent",
        "import planners",
        "def f():\n    import rap.render.style\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rap.scene import Scene\n",
        "try:\n    import planners.train\nexcept ImportError:\n    pass\n",
        "import importlib\nm = importlib.import_module('rap.scene')\n",
        "from .. import rap",
        "from ..rap.scene import Scene",
    ],
)
def test_checker_flags_forbidden_imports(source):
    assert violations(source, "rasterizer.renderer", ("rap", "planners"))


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np",
        "import rapidjson",
        "import raptor.rap",
        "from rasterizer.camera import Rig",
        "from . import camera",
        "from .primitives import Boxes",
        "from planners_extra import x",
        "import importlib\nm = importlib.import_module(name)\n",
        "x = 'import rap'",
    ],
)
def test_checker_allows_other_imports(source):
    assert violations(source, "rasterizer.renderer", ("rap", "planners")) == []


def test_checker_resolves_relative_imports():
    assert imported_modules("from .camera import Rig", "rasterizer.renderer") >= {"rasterizer.camera", "rasterizer.camera.Rig"}
    assert "rap.scene" in imported_modules("from ..scene import Scene", "rap.sources.womd")
    assert "rap.sources.womd" in imported_modules("from . import womd", "rap.sources", is_package=True)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import moderngl\nctx = moderngl.create_standalone_context(require=330)", True),
        ("import moderngl as mgl\nctx = mgl.create_context()", True),
        ("from moderngl import create_standalone_context\nctx = create_standalone_context()", True),
        ("from moderngl import create_context as cc\nctx = cc()", True),
        ("from rasterizer.context import create_context\nctx = create_context()", False),
        ("import moderngl\nprogram = ctx.program(vertex_shader='')", False),
    ],
)
def test_context_checker(source, expected):
    assert creates_context(source) is expected


# -- the code base -----------------------------------------------------------------------------
def test_rasterizer_imports_neither_rap_nor_planners():
    bad = {}
    for path, text in sources("rasterizer"):
        found = violations(text, module_name(path), ("rap", "planners"), path.name == "__init__.py")
        if found:
            bad[str(path.relative_to(ROOT))] = found
    assert not bad, f"rasterizer must not import rap or planners: {bad}"


COMMANDS = ("rap/cli.py", "rap/agents.py", "rap/chain.py", "rap/demo.py", "rap/experiments/")  # may import planners


def test_only_the_commands_import_planners():
    bad = {}
    for path, text in sources("rap"):
        if str(path.relative_to(ROOT)).startswith(COMMANDS):
            continue
        found = violations(text, module_name(path), ("planners",), path.name == "__init__.py")
        if found:
            bad[str(path.relative_to(ROOT))] = found
    assert not bad, f"only {', '.join(COMMANDS)} may import planners: {bad}"


def test_one_module_creates_gl_contexts():
    creators = [
        str(path.relative_to(ROOT))
        for package in ("rap", "rasterizer")
        for path, text in sources(package)
        if creates_context(text)
    ]
    assert creators == ["rasterizer/context.py"]


def import_graph(packages: tuple[str, ...] = ("rap", "rasterizer")) -> dict[str, set[str]]:
    """Module → the project modules it imports (anywhere in the file)."""
    modules = {}
    for package in packages:
        for path, text in sources(package):
            modules[module_name(path)] = (path, text)
    graph = {}
    for name, (path, text) in modules.items():
        found = imported_modules(text, name, path.name == "__init__.py")
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    assert cycles(import_graph()) == [], "modules import each other (function-level imports count too)"


def test_subpackages_import_one_way():
    """rap's subpackages (sources, render, augment, dataset, sim, metrics, eval) form no cycle."""

    def package(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and (ROOT / "rap" / parts[1]).is_dir()) else name

    packages: dict[str, set[str]] = {}
    for name, deps in import_graph(("rap",)).items():
        packages.setdefault(package(name), set()).update(package(d) for d in deps if package(d) != package(name))
    assert cycles(packages) == []
