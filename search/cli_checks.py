"""The pre-flight every command shares: run, evaluate and report call `check_cli_inputs` first, with what they use.

    check_cli_inputs(results, decode_cache=True)   # ValueError, one line naming the file, flag or variable

Before, run.py alone refused an `optuna.db` that is not SQLite and a decode cache folder that is a file; report.py
then died in an 82-line SQLAlchemy traceback and evaluate.py in a FileExistsError on the same input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from search.paths import optuna_url
from search.preflight import _check_cache_folder, _check_optuna_storage, _unwritable


def check_cli_inputs(results: Optional[str | Path] = None, decode_cache: bool = False,
                     cache_dir: Optional[str] = None, optuna_storage: Optional[str] = None) -> None:
    """`results`: the study's storage (`optuna_storage`, else its optuna.db, when there is one) must be usable. `decode_cache`: the command decodes images, so
    the decode cache folder (`cache_dir` when given, else $LEUKTUNE_CACHE or its default) must be writable."""
    if results is not None:
        _check_optuna_storage(optuna_storage or optuna_url(results))
    if decode_cache and cache_dir is not None:
        why = _unwritable(Path(cache_dir).expanduser())
        if why:
            raise ValueError(f"--cache-dir {cache_dir}: cannot write the decode cache there ({why})")
    elif decode_cache:
        _check_cache_folder()


__all__ = ["check_cli_inputs"]
