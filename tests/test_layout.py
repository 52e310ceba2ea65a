"""The house is easy to see: no import circles among gradlab's modules, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import gradlab

ROOT = Path(gradlab.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The gradlab modules a file imports, anywhere in it (functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                # `from gradlab import plots` imports the module, not the package's __init__.
                found.add(candidate if candidate in modules else node.module)
    return found & modules


def test_no_module_imports_itself_through_others() -> None:
    files = {module_name(path): path for path in ROOT.rglob("*.py")}
    # Package __init__ files only re-export (the flat public API): they are not modules
    # that logic flows through, and every module is reachable from them by design.
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    modules = set(files) - packages
    graph = {name: imports_of(files[name], modules) - {name} for name in modules}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif len(path) < 12:
                visit(target, [*path, target])

    for start in sorted(modules):
        visit(start, [start])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles[:5])
