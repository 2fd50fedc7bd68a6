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


# Each room of search/ may import the rooms after it in this list, never one before it (search/__init__.py,
# search/moved.py and the entry scripts at the top of search/ are outside the rooms). docs/map.md says why.
ROOMS = ("benchmark", "cli", "reporting", "evaluation", "tuning", "board")


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "search" and parts[1] in ROOMS else None


def test_every_module_of_search_lives_in_a_room_or_is_an_entry_script():
    top = {path.stem for path in (ROOT / "search").glob("*.py")}
    assert top == {"__init__", "_script", "moved", "run", "evaluate", "leaderboard", "report", "predict", "export"}
    assert {path.name for path in (ROOT / "search").iterdir() if path.is_dir() and path.name != "__pycache__"} == set(ROOMS)


def test_rooms_import_only_the_rooms_below_them():
    for name, path in _modules().items():
        room = _room(name)
        if room is None:
            continue
        below = ROOMS[ROOMS.index(room):]
        upward = sorted(m for m in _imports(path) if _room(m) and _room(m) not in below)
        assert not upward, f"{path.relative_to(ROOT)} (room {room}) imports {upward}: a room imports only {below}"


def test_entry_scripts_only_hand_over_to_their_room():
    """`python search/run.py` and the other scripts keep working as documented; each is a shim over its room's main."""
    for script in ("run", "evaluate", "leaderboard", "report", "predict", "export"):
        imported = {m for m in _imports(ROOT / "search" / f"{script}.py") if m.startswith("search.")}
        mains = {m for m in imported if m.endswith(".main")}
        assert len(mains) == 1 and imported == mains | {m.removesuffix(".main") for m in mains}, \
            f"search/{script}.py imports {sorted(imported)}"
