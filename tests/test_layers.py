"""The two layers hold: the core (`leukmodels`) imports neither the search layer nor Ray, and no module imports one
that imports it back (every import a run can execute counts, at the top of a module or inside a function)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    files = [p for package in ("leukmodels", "search") for p in sorted((ROOT / package).rglob("*.py"))]
    names = {}
    for path in files:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(path: Path) -> set[str]:
    """Every module an executable import statement of `path` names (TYPE_CHECKING blocks never run)."""
    tree = ast.parse(path.read_text())
    guards = [node for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)]
    skipped = {id(n) for guard in guards for n in ast.walk(guard)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_core_imports_neither_the_search_layer_nor_ray():
    for name, path in _modules().items():
        if name.startswith("leukmodels"):
            upward = sorted(m for m in _imports(path) if m.split(".")[0] in ("search", "ray"))
            assert not upward, f"{path.relative_to(ROOT)} imports {upward}"


def test_no_import_cycle():
    modules = _modules()
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join(trail[trail.index(target):] + [target])}"
            if target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
