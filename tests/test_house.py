"""House rules of the emotion package, read from its source with ast (no import, so it costs milliseconds): no import
cycle among its modules, no function over MAX_FUNCTION_LINES lines, at most MAX_FUNCTION_IMPORTS imports inside
functions (each one there for a reason its comment gives: an optional or slow dependency, or a cycle)."""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "emotion"
MAX_FUNCTION_LINES = 80
MAX_FUNCTION_IMPORTS = 15
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
IMPORTS = (ast.Import, ast.ImportFrom)


@lru_cache(maxsize=None)
def modules() -> dict[str, tuple[Path, ast.Module]]:
    """Dotted module name -> (file, parsed source) for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text(), filename=str(path)))
    return found


def imported_names(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """What an import statement names, as absolute dotted names: modules, and `from X import Y`'s X.Y (a module when Y
    is a submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level or inside a function."""
    known = modules()
    graph = {}
    for name, (path, tree) in known.items():
        targets = {target for node in ast.walk(tree) if isinstance(node, IMPORTS)
                   for target in imported_names(name, path, node)}
        graph[name] = {target for target in targets if target in known and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets, each as the modules along it (first one repeated at the end)."""
    found, state, trail = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        trail.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target)
        trail.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(module, node) of every function and method, nested ones included."""
    return [(name, node) for name, (_, tree) in modules().items() for node in ast.walk(tree) if isinstance(node, FUNCTIONS)]


def test_no_import_cycle_in_emotion():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_the_cycle_check_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_function_in_emotion_over_80_lines():
    lengths = {f"{module}:{node.name}": node.end_lineno - node.lineno + 1 for module, node in functions()}
    too_long = {name: lines for name, lines in lengths.items() if lines > MAX_FUNCTION_LINES}
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them): {too_long}"


def test_at_most_15_imports_inside_functions_in_emotion():
    # A set: an import in a nested function is inside its outer function too.
    inside = sorted({f"{module}:{node.lineno}" for module, function in functions() for node in ast.walk(function)
                     if isinstance(node, IMPORTS)})
    assert len(inside) <= MAX_FUNCTION_IMPORTS, (f"{len(inside)} imports inside functions (at most {MAX_FUNCTION_IMPORTS}: "
                                                 f"move the others to the top of their module): {inside}")
