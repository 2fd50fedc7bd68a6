"""Old module names of `search/` (before its rooms) kept importable, so that what Tune pickled by module path in a
search started before the move (callbacks, the trainable, the searcher's space) still loads on `--resume`.

    import search.rows            # the module search.tuning.rows, also under its old name

Installed by `search/__init__.py`; an old name imports its new module and nothing else.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old name under search. -> new name under search. Not here: `search.tuning` and `search.benchmark`, now rooms (Tune
# never pickled anything of theirs), and the six entry scripts, still at their old paths.
MOVED = {
    "benchmark_analysis": "benchmark.analysis", "benchmark_figures": "benchmark.figures",
    "benchmark_report": "benchmark.tables", "benchmark_selection": "benchmark.selection",
    "board_files": "board.files", "console": "tuning.console", "crossval": "tuning.crossval", "data": "tuning.data",
    "faults": "tuning.faults", "feasible": "tuning.feasible", "flags": "cli.flags", "heldout": "evaluation.heldout",
    "history": "tuning.rows", "leaderboard_append_cost": "benchmark.append_cost", "loopback": "cli.loopback",
    "namelock": "board.namelock", "pareto": "board.pareto", "paths": "board.paths",
    "patient_predict": "evaluation.patient_predict", "patient_scoring": "evaluation.patient_scoring",
    "pbt": "tuning.pbt", "plan": "tuning.plan", "preflight": "cli.preflight", "report_patients": "reporting.patients",
    "report_sections": "reporting.sections", "rerank": "tuning.rerank", "resume_guard": "tuning.resume_guard",
    "rows": "tuning.rows", "schema": "board.schema", "scoring": "evaluation.scoring",
    "search_files": "board.search_files", "settings": "board.settings", "sizes": "cli.sizes", "spaces": "tuning.spaces",
    "storage": "board.storage", "storage_full": "tuning.storage_full", "strategies": "tuning.strategies",
    "study_storage": "board.study_storage", "timeline": "tuning.timeline", "timeline_tune": "tuning.timeline_tune",
    "trial": "tuning.trial", "trial_timeline": "benchmark.trial_timeline",
    "unbuildable": "tuning.unbuildable", "uncertainty": "tuning.uncertainty", "warmstart": "tuning.warmstart",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds `search.<old>` and answers with the module `search.<room>.<new>` (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.rpartition(".")
        if package != "search" or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(f"search.{MOVED[old]}"))


def install() -> None:
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
