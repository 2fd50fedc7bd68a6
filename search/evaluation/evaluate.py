"""Held-out test evaluation of a search's best trials: the answer to "how good is the winner on unseen patients?".

    python search/evaluate.py [--leaderboard results/leaderboard] [--search NAME] [--top 3 | --trials ID ...]
                              [--ensemble K] [--data ROOT] [--tta both|on|off] [--retrain] [--patient-correction]
                              [--out results/test_metrics.parquet]

Test patients are the official preliminary test set when the tree has one, else the `test` part of the search's own
patient split, recomputed and checked (search/evaluation/heldout.py). `--ensemble K` adds the mean P(ALL) of the top K trials
that load, per TTA mode (search/evaluation/scoring.py): trial_id `ensemble-topK`, family `ensemble`, members in `members`.

Writes next to the leaderboard, atomically (a re-run replaces its rows, other searches' rows stay):
`test_metrics.parquet`, one row per (search, trial_id, tta, retrained, method) with the metrics, per-patient accuracy
and how the test patients were chosen, and `test_predictions.parquet`, P(ALL) per test image and model (for the
report).
Results on generated cells say data_generated = True: NEVER C-NMC results.

The patient's answer (search/evaluation/patient_scoring.py): every row also holds 95% intervals from a bootstrap over patients,
the patient-level ROC AUC, sensitivity and specificity of the patient calls (threshold chosen on the validation
patients, never on test) and the calibration error before and after the checkpoint's temperature; one row per test
patient and model goes to `test_patients.parquet`. `--patient-correction` adds transductive rows (method
`patient-shrinkage`, transductive = True) beside the plain ones (method `plain`), never in their place.

Exit codes: 0 written; 2 bad input (leaderboard missing or unreadable, unknown search or trial, data that does not
match the search), one line on stderr naming it; 1 when no chosen trial could be evaluated.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from leukmodels.atomic import atomic_path
from leukmodels.data import DataError
from leukmodels.metrics import SCALAR_METRICS
from search.board import search_files
from search.board.checks import check_cli_inputs
from search.evaluation.heldout import TestSet, held_out_set
from search.board.leaderboard import DEFAULT_PATH, LeaderboardError, exists, read
from search.evaluation.patient_scoring import PLAIN, method_of, patient_answers, print_patient_answers
from search.board.paths import TEST_METRICS, TEST_PATIENTS, TEST_PREDICTIONS
from search.board.schema import STATUSES
from search.evaluation.scoring import NothingEvaluated, Scored, ScoringOptions, evaluate_ensemble, evaluate_trials

KEY_COLUMNS = ("search", "trial_id", "tta", "retrained", "method")  # one evaluation; a re-run replaces its rows
KEY_DEFAULTS = {"method": PLAIN}  # a key column files written before it existed lack
USABLE_STATUS = tuple(status for status in STATUSES if status != "error")  # a best checkpoint worth testing


class EvaluateError(ValueError):
    """Bad input to evaluation (leaderboard, search, trial id, flag); the message is one line naming it."""


# -- leaderboard and files ----------------------------------------------------------------------------------------
def read_board(path: Path) -> pd.DataFrame:
    """The leaderboard at `path`; EvaluateError (one line naming the file) when it is missing or unreadable."""
    if not exists(path):
        raise EvaluateError(f"no leaderboard at {path}; run search/run.py first or pass --leaderboard")
    try:
        return read(path)
    except LeaderboardError as err:  # not parquet, wrong schema: the message names the file
        raise EvaluateError(str(err)) from None


def read_parquet_or_none(path: Path) -> Optional[pd.DataFrame]:
    """A parquet file we wrote before (None when absent); EvaluateError naming it when it does not read."""
    if not Path(path).is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types (ArrowInvalid, OSError) for a damaged file
        why = " ".join(str(err).split())[:200]
        raise EvaluateError(f"cannot read {path}: {why}; move it away or pass another path") from None


def board_dir(path: Path) -> Path:
    return Path(path).resolve().parent


def select_trials(board: pd.DataFrame, search: Optional[str], top: Optional[int], trials: Optional[Sequence[str]],
                  metric: Optional[str] = None) -> tuple[pd.DataFrame, str]:
    """The trials to evaluate, best validation `metric` (default: the one the search ranked by) first, and the search
    they belong to.

    Without `search`, the most recent search in the board (by started_at when present). Trials without a checkpoint
    or with an error status are skipped; `trials` given by id must all exist.
    """
    if board.empty:
        raise EvaluateError("the leaderboard is empty")
    if search is None:
        order = board.sort_values("started_at") if "started_at" in board else board
        search = str(order["search"].iloc[-1])
    rows = board[board["search"].astype(str) == str(search)]
    if rows.empty:
        raise EvaluateError(f"--search {search!r}: not in the leaderboard; it has {sorted(board['search'].unique())}")
    metric = metric or str(rows["metric"].iloc[0])
    if metric not in rows:
        raise EvaluateError(f"--metric {metric!r} is not a leaderboard column")
    if trials:
        missing = sorted(set(map(str, trials)) - set(rows["trial_id"].astype(str)))
        if missing:
            raise EvaluateError(f"--trials: trial id(s) {missing} not in search {search!r}")
        rows = rows[rows["trial_id"].astype(str).isin(list(map(str, trials)))]
    usable = rows["checkpoint"].notna() & (rows["checkpoint"].astype(str) != "")
    if "status" in rows:
        usable &= rows["status"].astype(str).str.lower().isin(USABLE_STATUS)
    rows = rows[usable].sort_values(metric, ascending=False, na_position="last")
    if rows.empty:
        raise NothingEvaluated(f"search {search!r} has no finished trial with a checkpoint")
    return (rows if trials else rows.head(top)).reset_index(drop=True), str(search)


def write_parquet_atomic(new: pd.DataFrame, path: Path, key_columns: Sequence[str]) -> None:
    """Merge `new` into the parquet at `path` (rows with the same key are replaced) via a temp file + os.replace."""
    path = Path(path)
    table, old = new, read_parquet_or_none(path)
    if old is not None:
        old = old.assign(**{c: KEY_DEFAULTS[c] for c in key_columns if c not in old and c in KEY_DEFAULTS})
        keys = set(map(tuple, new[list(key_columns)].astype(str).to_numpy()))
        keep = [tuple(k) not in keys for k in old[list(key_columns)].astype(str).to_numpy()]
        table = pd.concat([old[keep], new], ignore_index=True)
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="search/evaluate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leaderboard", default=DEFAULT_PATH, help="the leaderboard: its dataset folder, or the "
                   "parquet file of earlier versions")
    p.add_argument("--search", help="search name (default: the most recent search in the leaderboard)")
    p.add_argument("--storage", help=search_files.READ_FLAG_HELP)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--top", type=int, default=3, help="evaluate the top K trials by validation metric (3)")
    which.add_argument("--trials", nargs="+", metavar="ID", help="evaluate these trial ids instead of the top K")
    p.add_argument("--ensemble", type=int, metavar="K", help="also evaluate the ensemble of the top K trials that "
                   "load (mean P(ALL) per image, threshold 0.5); they are evaluated one by one too (>= 2)")
    p.add_argument("--metric", help="leaderboard column that ranks the trials (default: the one the search ranked by, "
                   "its rows' `metric`)")
    p.add_argument("--data", help="data root (default: the leaderboard row's data_root)")
    p.add_argument("--split-seed", type=int, help="seed of split_by_patient (default: split_seed the search "
                   "recorded, else the rows' seed column, which search/run.py also uses for the split, else 0)")
    p.add_argument("--tta", choices=("both", "on", "off"), default="both",
                   help="8-way dihedral test-time augmentation: evaluate with it, without it, or both (both)")
    p.add_argument("--retrain", action="store_true", help="also retrain the best trial's config on train+val "
                   "patients for its best epoch count, then evaluate that model")
    p.add_argument("--patient-correction", action="store_true", help="also score each model with every test "
                   "cell's P(ALL) shrunk toward its patient's mean (strength chosen on validation patients): "
                   "TRANSDUCTIVE rows of their own, method patient-shrinkage")
    p.add_argument("--out", help="test metrics parquet (default: test_metrics.parquet next to the leaderboard)")
    p.add_argument("--cache-dir", help="decode cache folder (default: decode's own, $LEUKTUNE_CACHE or "
                   "~/.cache/leukemia-tune, shared with the search)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    args = p.parse_args(argv)
    if args.top is not None and args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    if args.ensemble is not None and args.ensemble < 2:
        p.error(f"--ensemble must be >= 2 (an ensemble of one trial is that trial), got {args.ensemble}")
    return args


# -- outputs ------------------------------------------------------------------------------------------------------
def result_tables(scored: Sequence[Scored], search: str, test_set: TestSet, extra: Sequence[dict] = (),
                  patients: Sequence[pd.DataFrame] = ()) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(test_metrics rows, test_predictions rows, test_patients rows) of every scored model; `extra` and `patients`
    (search.evaluation.patient_scoring.patient_answers) hold each model's patient columns and per-patient table."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    frame = test_set.frame
    rows, preds, per_patient = [], [], []
    for s, columns, table in itertools.zip_longest(scored, extra, patients, fillvalue=None):
        key = {"search": search, "trial_id": s.trial_id, "tta": s.tta, "retrained": s.retrained,
               "method": method_of(s)}
        rows.append({**key, **s.fields, **s.metrics, **(columns or {}), **test_set.info, "n_test_images": len(frame),
                     "data_root": test_set.root, "data_generated": test_set.generated, "evaluated_at": now})
        preds.append(pd.DataFrame({**key, "image_id": frame["image_id"].astype(str).to_numpy(),
                                   "patient": test_set.patients, "label": test_set.labels, "prob_all": s.prob_all,
                                   "prob_all_calibrated": s.prob_calibrated if s.prob_calibrated is not None
                                   else s.prob_all, "path": frame["path"].astype(str).to_numpy(),
                                   "data_generated": test_set.generated}))
        per_patient += [table.assign(**key, data_generated=test_set.generated)] if table is not None else []
    patients_table = pd.concat(per_patient, ignore_index=True) if per_patient else pd.DataFrame()
    return pd.DataFrame(rows), pd.concat(preds, ignore_index=True), patients_table


def print_scored(scored: Sequence[Scored]) -> None:
    for s in scored:
        print(f"  {s.trial_id:<24} tta={'on ' if s.tta else 'off'} retrained={s.retrained!s:<5} "
              f"weighted_f1={s.metrics['weighted_f1']:.4f} bal_acc={s.metrics['balanced_accuracy']:.4f} "
              f"auc={s.metrics['roc_auc']:.4f}", file=sys.stderr)
        if s.metrics["single_class"]:
            print(f"evaluate: warning: {s.trial_id} calls {s.metrics['predicted_all']:.0%} of the test cells ALL: "
                  f"a one-class predictor (its weighted F1 reflects the class ratio, not the cells)", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class EvaluateRequest:
    """What search/evaluate.py was asked (its flags, `parse_args`), with the torch device chosen."""
    leaderboard: str
    device: str
    search: Optional[str] = None
    storage: Optional[str] = None
    top: Optional[int] = 3
    trials: Optional[list[str]] = None
    ensemble: Optional[int] = None
    metric: Optional[str] = None  # None: the metric the search ranked by
    data: Optional[str] = None
    split_seed: Optional[int] = None
    tta: str = "both"
    retrain: bool = False
    patient_correction: bool = False
    out: Optional[str] = None
    cache_dir: Optional[str] = None


def run(request: EvaluateRequest) -> int:
    """load rows -> recompute the held-out split -> evaluate each trial (decoding per size) -> ensemble -> write."""
    board_path = Path(request.leaderboard)
    if request.storage:
        try:
            print(f"evaluate: {search_files.for_reading(request.storage, request.search, board_path)}", file=sys.stderr)
        except ValueError as error:
            raise EvaluateError(str(error)) from None
    top = None if request.trials else max(request.top, request.ensemble or 0)  # ensemble members get rows of their own
    chosen, search = select_trials(read_board(board_path), request.search, top=top, trials=request.trials,
                                   metric=request.metric)
    options = ScoringOptions(metric=request.metric or str(chosen["metric"].iloc[0]),  # what the search ranked by
                             device=request.device, tta=request.tta, cache_dir=request.cache_dir,
                             retrain=request.retrain)
    results_dir = board_dir(board_path)
    out_path = Path(request.out) if request.out else results_dir / TEST_METRICS
    test_set = held_out_set(chosen.iloc[0], results_dir, request.data, request.split_seed, request.cache_dir)
    print(f"evaluate: search {search!r}, {len(chosen)} trial(s), test = {test_set.info['test_source']} "
          f"({len(test_set.frame)} images, {test_set.info['n_test_patients']} patients), data "
          f"{'GENERATED' if test_set.generated else 'C-NMC'} at {test_set.root}", file=sys.stderr)
    scored = evaluate_trials(chosen, test_set, options, results_dir / search)
    if request.ensemble:
        scored += evaluate_ensemble(scored, request.ensemble, test_set)
    print_scored(scored)
    scored, extra, per_patient = patient_answers(scored, test_set, correction=request.patient_correction)
    table, preds, patients = result_tables(scored, search, test_set, extra, per_patient)
    write_parquet_atomic(table, out_path, KEY_COLUMNS)
    write_parquet_atomic(preds, out_path.with_name(TEST_PREDICTIONS), KEY_COLUMNS)
    write_parquet_atomic(patients, out_path.with_name(TEST_PATIENTS), KEY_COLUMNS)
    shown = ["trial_id", "family", "tta", "retrained"] + list(SCALAR_METRICS[:5])
    print(table[table["method"] == PLAIN][shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print_patient_answers(table)
    print(f"wrote {out_path}, {out_path.with_name(TEST_PREDICTIONS)} and {out_path.with_name(TEST_PATIENTS)}"
          + ("  [GENERATED DATA: not C-NMC results]" if test_set.generated else ""))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.device is None:
        import torch  # here: torch, measured +2-4 s on the --help of evaluate, predict and report

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    request = EvaluateRequest(**vars(args))
    try:
        check_cli_inputs(decode_cache=True, cache_dir=args.cache_dir)  # the pre-flight every command shares
    except ValueError as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    try:
        return run(request)
    except NothingEvaluated as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 1
    except (EvaluateError, DataError) as err:  # DataError: a data root, split or image that does not fit
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
