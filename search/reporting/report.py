"""One self-contained HTML page per search: what was tried, what won, and how the winner does on unseen patients.

    python search/report.py [--leaderboard results/leaderboard] [--search NAME] [--out FILE]

Writes results/<search>/report.html (next to the leaderboard), which opens from disk with no network. Its sections
(search/reporting/sections.py): the ranked leaderboard, best score by family, the Optuna study's history and parameter
importances, learning curves of the top trials and, once search/evaluate.py has run, the held-out test metrics and
the winner's ROC curve, confusion matrix, per-patient accuracy and most-wrong cells, the patient's answer with
its intervals and the winner's calibration (search/reporting/patients.py), and apart from the rest any transductive
patient-correction rows. Generated data get a banner.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import html
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from leukmodels.atomic import atomic_path
from search.board.checks import check_cli_inputs
from search.evaluation.evaluate import EvaluateError, board_dir, read_board, read_parquet_or_none
from search.board import search_files
from search.board.leaderboard import DEFAULT_PATH
from search.board.schema import REPORT_COLUMNS
from search.board.settings import DEFAULT_METRIC
from search.board.paths import REPORT, TEST_METRICS, TEST_PATIENTS, TEST_PREDICTIONS, optuna_url
from search.reporting.patients import (calibration_section, patient_section, split_plain,
                                    transductive_section)
from search.board.study_storage import remember, saved_url, sqlite_path
from search.reporting.sections import (family_section, learning_curves_section, note, optuna_section,
                                    pareto_section, single_class_note, table_html, winner_section)

TEST_COLUMNS = ("val_rank", "trial_id", "family", "n_members", "tta", "retrained", "weighted_f1", "balanced_accuracy",
                "roc_auc", "accuracy", "sensitivity", "specificity", "predicted_all", "single_class", "n_test_images",
                "n_test_patients", "test_source")
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
.banner{background:#b00020;color:#fff;font-weight:bold;font-size:20px;padding:10px;margin:8px 0}
.note{color:#555;font-style:italic}img{max-width:100%}h2{border-bottom:1px solid #ddd}"""


def build_report(board: pd.DataFrame, search: str, test_metrics: Optional[pd.DataFrame],
                 predictions: Optional[pd.DataFrame], storage: Optional[str], study: str, top: int = 5,
                 worst: int = 16, patients: Optional[pd.DataFrame] = None) -> str:
    rows = board[board["search"].astype(str) == search]
    metric = str(rows["metric"].iloc[0]) if "metric" in rows and len(rows) else DEFAULT_METRIC
    rows = rows.sort_values(metric, ascending=False, na_position="last")
    generated = bool(rows.get("data_generated", pd.Series([False])).fillna(False).any())
    test_rows = None if test_metrics is None else test_metrics[test_metrics["search"].astype(str) == search]
    test_rows, transductive = split_plain(test_rows)  # transductive rows are shown apart, never among these
    predictions = split_plain(predictions)[0]
    if test_rows is not None and "data_generated" in test_rows:
        generated |= bool(test_rows["data_generated"].any())
    root = rows["data_root"].dropna().iloc[0] if "data_root" in rows and rows["data_root"].notna().any() else "?"
    body = [f"<h1>Search {html.escape(search)}</h1>"]
    if generated:
        body.append('<div class="banner">GENERATED DATA — not C-NMC results</div>')
    body.append(f"<p>Data: {html.escape(str(root))}. {len(rows)} trials, ranked by validation "
                f"{html.escape(metric)} (patient-level split). Written {dt.datetime.now():%Y-%m-%d %H:%M}.</p>")
    body += ["<h2>Leaderboard</h2>", single_class_note(rows, test_rows), table_html(rows, REPORT_COLUMNS),
             "<h2>Best score by family</h2>", family_section(rows, metric), *pareto_section(rows),
             "<h2>Optuna: optimisation history and parameter importances</h2>", optuna_section(storage, study),
             f"<h2>Learning curves of the top {top} trials</h2>", learning_curves_section(rows, top),
             "<h2>Held-out test patients</h2>"]
    if test_rows is None or test_rows.empty or predictions is None:
        body.append(note("Not evaluated yet: run python search/evaluate.py --search " + search))
    else:
        body.append(table_html(test_rows.sort_values(["val_rank", "retrained", "tta"]), TEST_COLUMNS))
        mine = predictions[predictions["search"].astype(str) == search]
        body.append(winner_section(test_rows, mine, worst))
        patients = None if patients is None else patients[patients["search"].astype(str) == search]
        body += ["<h2>The patient's answer</h2>", patient_section(test_rows, patients),
                 "<h2>Calibration of the winner</h2>", calibration_section(test_rows, mine),
                 *transductive_section(test_rows, transductive)]
    title = f"leukemia-tune report: {search}" + (" (GENERATED DATA)" if generated else "")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write_atomic(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="search/report.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leaderboard", default=DEFAULT_PATH)
    p.add_argument("--search", help="search name (default: the most recent search in the leaderboard)")
    p.add_argument("--storage", help=search_files.READ_FLAG_HELP)
    p.add_argument("--test-metrics", help="evaluate.py output (default: test_metrics.parquet next to the leaderboard)")
    p.add_argument("--optuna-storage", help="Optuna storage URL or journal file (default: the search's own "
                   "--optuna-storage, else sqlite:///<leaderboard dir>/optuna.db)")
    p.add_argument("--study", help="Optuna study name (default: the search name)")
    p.add_argument("--top", type=int, default=5, help="trials shown in the learning curves (5)")
    p.add_argument("--worst", type=int, default=16, help="most-wrong test cells shown (16)")
    p.add_argument("--out", help="HTML file (default: <leaderboard dir>/<search>/report.html)")
    return p.parse_args(argv)


def choose_search(board: pd.DataFrame, search: Optional[str], path: str) -> str:
    """`search`, or the most recent one in the board; EvaluateError naming the file when there is none."""
    if board.empty:
        raise EvaluateError(f"the leaderboard {path} is empty")
    search = search or str(board.sort_values("started_at")["search"].iloc[-1])
    if search not in set(board["search"].astype(str)):
        raise EvaluateError(f"--search {search!r}: not in {path}")
    return search


def study_location(given: Optional[str], results: Path, search: str) -> Optional[str]:
    """The study's storage URL: --optuna-storage, else what the search saved (its --optuna-storage), else the SQLite
    file beside the leaderboard; None when that file does not exist."""
    url = remember(given) if given else saved_url(str(results), search) or optuna_url(results)
    database = sqlite_path(url)
    return None if database is not None and not database.is_file() else url


@dataclasses.dataclass(frozen=True)
class ReportRequest:
    """What search/report.py was asked: its flags (`parse_args`)."""
    leaderboard: str = DEFAULT_PATH
    search: Optional[str] = None  # None: the most recent search of the leaderboard
    storage: Optional[str] = None
    test_metrics: Optional[str] = None
    optuna_storage: Optional[str] = None
    study: Optional[str] = None
    top: int = 5
    worst: int = 16
    out: Optional[str] = None


def write_report(request: ReportRequest) -> Path:
    if request.storage:
        try:
            print(search_files.for_reading(request.storage, request.search, Path(request.leaderboard)))
        except ValueError as error:
            raise EvaluateError(str(error)) from None
    board = read_board(Path(request.leaderboard))
    search = choose_search(board, request.search, request.leaderboard)
    results = board_dir(Path(request.leaderboard))
    metrics_path = Path(request.test_metrics) if request.test_metrics else results / TEST_METRICS
    test_metrics = read_parquet_or_none(metrics_path)  # None: not evaluated yet
    predictions = read_parquet_or_none(metrics_path.with_name(TEST_PREDICTIONS))
    patients = read_parquet_or_none(metrics_path.with_name(TEST_PATIENTS))
    storage = study_location(request.optuna_storage, results, search)
    page = build_report(board, search, test_metrics, predictions, storage, request.study or search, request.top,
                        request.worst,
                        patients)
    out = Path(request.out) if request.out else results / search / REPORT
    write_atomic(page, out)
    print(f"wrote {out} ({len(page) / 1e6:.1f} MB, self-contained)")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """0 written; 2 with one line on stderr when an input (leaderboard, test metrics, --search) is bad."""
    args = parse_args(argv)
    try:
        check_cli_inputs(None if args.optuna_storage else board_dir(Path(args.leaderboard)))  # shared pre-flight
    except ValueError as err:  # a results/optuna.db that is not SQLite
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    try:
        write_report(ReportRequest(**vars(args)))
    except EvaluateError as err:  # missing or corrupt leaderboard / test metrics, unknown search
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
