"""The structure: no import cycle in advisor/ or calibration/, imports inside functions included;
the library never imports the calibration, and neither do the library's tests (tests/, apart from
tests/calibration/), so that ``pytest tests --ignore tests/calibration`` runs without it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("advisor", "calibration")


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports anywhere in its source (``from pkg import mod`` counts as mod)."""
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            imported = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                    imported.add(node.module)
                    imported |= {f"{node.module}.{alias.name}" for alias in node.names
                                 if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").exists()}
                elif isinstance(node, ast.Import):
                    imported |= {alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES}
            graph[name] = imported - {name}
    return graph


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start through the graph, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [*path, start]
            if nxt in graph and nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_module_imports_itself_back_through_others():
    graph = import_graph()
    assert len(graph) > 30
    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(graph, module))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_library_never_imports_the_calibration():
    graph = import_graph()
    assert not {name: sorted(d for d in deps if d.startswith("calibration"))
                for name, deps in graph.items() if name.startswith("advisor") and
                any(d.startswith("calibration") for d in deps)}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a Python file imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
    return found


def test_the_library_tests_never_import_the_calibration():
    library_tests = sorted((ROOT / "tests").glob("*.py"))
    assert len(library_tests) > 10 and (ROOT / "tests" / "calibration" / "test_fit.py").exists()
    assert not [path.name for path in library_tests if "calibration" in imported_packages(path)]


def test_the_finder_sees_a_cycle():
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert cycle_from({"a": {"b"}, "b": set()}, "a") is None
