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


# -- Floors: engines know nothing above them; nothing outside engines names an engine ---------

#: What engines stand on: modules that import no engine and nothing above the engines.
GROUND_FLOOR = {
    "gradlab._errors",
    "gradlab._tree",
    "gradlab._checks",
    "gradlab._output",
    "gradlab._provenance",
    "gradlab._agreement",
    "gradlab._fingerprint",
    "gradlab._loss",
    "gradlab._picklable",
    "gradlab._flat",
    "gradlab._tap",
    "gradlab.optimizers",
    "gradlab.schedules",
}
#: The modules of engines/ that name no framework: what the rest of gradlab may import.
FRAMEWORK_NEUTRAL = {
    "gradlab.engines",
    "gradlab.engines._protocol",
    "gradlab.engines._registry",
    "gradlab.engines._derive",
    "gradlab.engines._forward",
    "gradlab.engines._listing",
    "gradlab.engines.parallel",
    "gradlab.engines.parallel._common",
    "gradlab.engines.parallel._data",
}


def all_imports_of(path: Path) -> set[str]:
    """Every gradlab module a file imports, as written: statements anywhere (functions and
    TYPE_CHECKING too) and ``importlib.import_module("gradlab...")`` with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    files = {module_name(path) for path in ROOT.rglob("*.py")}
    # `from gradlab._tree import leaves` adds "gradlab._tree.leaves": keep real modules only.
    return {name for name in found if name in files}


def is_ground(module: str) -> bool:
    return (
        module in GROUND_FLOOR
        or module == "gradlab.problems"
        or module.startswith("gradlab.problems.")
    )


def test_engines_import_nothing_above_the_ground_floor() -> None:
    engines = ROOT / "engines"
    climbing = {
        f"{module_name(path)} imports {target}"
        for path in engines.rglob("*.py")
        for target in all_imports_of(path)
        if not target.startswith("gradlab.engines")
        and target != "gradlab"
        and not is_ground(target)
    }
    assert not climbing, "engines climb above the ground floor: " + "; ".join(sorted(climbing))


def test_the_ground_floor_imports_no_engine() -> None:
    # Package __init__ files only re-export (gradlab.problems still finds GradBench's
    # problems under their old address, on first use): the modules are what is checked.
    climbing = {
        f"{module_name(path)} imports {target}"
        for path in ROOT.rglob("*.py")
        if is_ground(module_name(path)) and path.name != "__init__.py"
        for target in all_imports_of(path)
        if target != "gradlab" and not is_ground(target)
    }
    assert not climbing, "the ground floor climbs: " + "; ".join(sorted(climbing))


def test_only_engines_import_the_framework_engine_modules() -> None:
    engines = ROOT / "engines"
    naming = {
        f"{module_name(path)} imports {target}"
        for path in ROOT.rglob("*.py")
        if engines not in path.parents
        for target in all_imports_of(path)
        if target.startswith("gradlab.engines") and target not in FRAMEWORK_NEUTRAL
    }
    assert not naming, "an engine module named outside engines/: " + "; ".join(sorted(naming))
