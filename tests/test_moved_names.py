"""A search started before search/ was grouped into rooms still resumes: Tune pickled its callbacks, trainable and
search space by module path (`search.rows.LeaderboardCallback`), and each old path still loads the same object."""
import importlib
import inspect
import pickle
import subprocess
import sys

from search.moved import MOVED


def _old_pickle(module: str, name: str) -> bytes:
    """What pickle wrote for a class or function of `module` (protocol 0 spells the path out: GLOBAL 'module name')."""
    return f"c{module}\n{name}\n.".encode()


def test_every_class_and_function_loads_under_its_old_module_path():
    for old, new in MOVED.items():
        module = importlib.import_module(f"search.{new}")
        defined = [value for value in vars(module).values()
                   if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == module.__name__]
        for value in defined:
            assert pickle.loads(_old_pickle(f"search.{old}", value.__qualname__)) is value, f"search.{old}"


def test_old_module_names_are_the_new_modules_and_import_nothing_else():
    code = ("import sys, search.rows as old, search.tuning.rows as new; assert old is new; "
            "print(sorted(m for m in sys.modules if m.startswith('search.tuning')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'search.tuning.rows'" in loaded and "search.tuning.tuner" not in loaded


def test_an_unknown_old_name_is_still_an_import_error():
    try:
        importlib.import_module("search.no_such_module")
    except ModuleNotFoundError as error:
        assert "search.no_such_module" in str(error)
    else:
        raise AssertionError("search.no_such_module imported")


def test_the_code_itself_imports_no_old_name():
    """The old names are for pickles only: every import in search/ and tests/ names a module where it lives now."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in sorted([*root.glob("search/**/*.py"), *root.glob("tests/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            old = [name for name in names if name.startswith("search.") and name.split(".")[1] in MOVED]
            assert not old, f"{path.relative_to(root)}:{node.lineno} imports {old[0]} (now search.{MOVED[old[0].split('.')[1]]})"
