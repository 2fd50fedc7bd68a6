"""The report's sections, each a piece of HTML: tables, and matplotlib figures embedded as base64 PNGs (no scripts,
fonts or links: the page opens from disk with no network). search/report.py puts them on one page.
"""
from __future__ import annotations

import base64
import html
import io
import json
import warnings
from typing import Optional, Sequence

import matplotlib
import numpy as np
import optuna
import pandas as pd
from PIL import Image

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from leukmodels.labels import ALL, CLASS_NAMES, HEM  # noqa: E402
from leukmodels.values import missing  # noqa: E402
from search.board import storage  # noqa: E402
from search.board.pareto import SIZE, TOLERANCE, front_of, pick_line, smallest_within  # noqa: E402
from search.evaluation.scoring import ENSEMBLE_FAMILY  # noqa: E402
from search.board.study_storage import masked, open_storage  # noqa: E402

VERSUS_COLUMNS = ("model", "members", "tta", "weighted_f1", "balanced_accuracy", "roc_auc", "accuracy",
                  "sensitivity", "specificity")


def new_figure(*args, **kwargs):
    """plt.subplots in matplotlib's default style (optuna's plots switch the global style to ggplot)."""
    with plt.style.context("default"):
        return plt.subplots(*args, **kwargs)


def figure_html(fig, alt: str) -> str:
    """A matplotlib figure as an inline base64 PNG <img> (closes the figure)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def table_html(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    shown = frame[[c for c in columns if c in frame]]
    return shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)


# -- sections -----------------------------------------------------------------------------------------------------
def single_class_note(rows: pd.DataFrame, test_rows: Optional[pd.DataFrame]) -> str:
    """A warning when the winner calls (almost) every validation or test cell one class (column single_class)."""
    if rows.empty:
        return ""
    winner = rows.iloc[0]
    flag = winner.get("single_class")
    where = ["validation"] if not missing(flag) and bool(flag) else []
    if test_rows is not None and "single_class" in test_rows:
        mine = test_rows[test_rows["trial_id"].astype(str) == str(winner["trial_id"])]
        where += ["test"] if mine["single_class"].fillna(False).astype(bool).any() else []
    if not where:
        return ""
    return (f'<div class="banner">The winner {html.escape(str(winner["trial_id"]))} calls (almost) every '
            f'{" and ".join(where)} cell one class: it learnt the class ratio, not the cells.</div>')



def family_section(rows: pd.DataFrame, metric: str) -> str:
    best = rows.dropna(subset=[metric]).sort_values(metric, ascending=False).groupby("family", sort=False).head(1)
    if best.empty:
        return note("No trial reported a score.")
    fig, ax = new_figure(figsize=(6, 0.5 + 0.5 * len(best)))
    ax.barh(best["family"], best[metric], color="tab:purple")
    ax.set_xlabel(f"best validation {metric}")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    return figure_html(fig, "best score by family") + table_html(best, ("family", "trial_id", metric, "num_parameters"))


def pareto_section(rows: pd.DataFrame) -> list[str]:
    """A multi-objective search's front (search/board/pareto.py): the first objective against the model size, every trial
    in grey, the front joined, the smallest model within 0.01 of the best circled; then the front's rows. [] for a
    single-objective search."""
    if "objectives" not in rows or not rows["objectives"].notna().any():
        return []
    metric, objectives = str(rows["metric"].iloc[0]), str(rows["objectives"].dropna().iloc[0]).split(",")
    trials, front, pick = rows.dropna(subset=[SIZE, metric]), front_of(rows), smallest_within(rows)
    fig, ax = new_figure(figsize=(7, 4))
    ax.scatter(trials[SIZE], trials[metric], color="lightgrey", edgecolor="grey", label="trial")
    ax.plot(front[SIZE], front[metric], "o-", color="tab:purple", label="Pareto front")
    if pick is not None:
        ax.axhline(pick[0][metric] - TOLERANCE, ls=":", color="grey", label=f"best - {TOLERANCE:g}")
        ax.scatter([pick[1][SIZE]], [pick[1][metric]], s=220, facecolors="none", edgecolors="tab:red",
                   label="smallest within it")
    ax.set(xscale="log", xlabel="parameters (log scale)", ylabel=f"validation {metric}",
           title=f"{' vs '.join(objectives)}: {len(front)} of {len(rows)} trials on the front")
    ax.legend(fontsize=8)
    columns = ("trial_id", "family", SIZE, *[o for o in objectives if o != SIZE], "status", "image_size", "filters",
               "depth", "lr")
    return ["<h2>Small and accurate: the Pareto front</h2>", note(pick_line(rows) or "No trial has a size."),
            figure_html(fig, "Pareto front"), table_html(front, list(dict.fromkeys(columns)))]


def optuna_section(storage: Optional[str], study_name: str) -> str:
    from optuna.visualization import matplotlib as optuna_plots  # here: it pulls in scipy, +0.04-0.08 s on --help

    if storage is None:
        return note("No Optuna study found (no optuna.db next to the leaderboard); pass --optuna-storage.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        opened = open_storage(storage)
    except ValueError as error:  # a database that does not answer: the rest of the report still stands
        return note(f"The Optuna study could not be read: {error}")
    shown = masked(storage)
    names = optuna.get_all_study_names(storage=opened)
    name = study_name if study_name in names else (names[0] if len(names) == 1 else None)
    if name is None:
        return note(f"No study named {study_name!r} in {shown} (it holds {names}); pass --study.")
    study = optuna.load_study(study_name=name, storage=opened)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    parts = [note(f"Study {name!r} in {shown}: {len(study.trials)} trials, {len(done)} complete "
                  "(ASHA-stopped trials count as complete with their last value).")]
    if not done:
        return "".join(parts)
    # a multi-objective study is plotted by its first objective (Optuna's plots need one target for it)
    first = dict(target=lambda t: t.values[0], target_name="first objective") if len(study.directions) > 1 else {}
    with warnings.catch_warnings(), plt.style.context("ggplot"):  # optuna sets ggplot: keep it inside this block
        warnings.simplefilter("ignore")  # optuna's matplotlib backend is marked experimental
        parts.append(figure_html(optuna_plots.plot_optimization_history(study, **first).figure,
                                 "optimisation history"))
        if len(done) < 2:
            parts.append(note("Parameter importances need at least 2 completed trials."))
        else:
            try:
                parts.append(figure_html(optuna_plots.plot_param_importances(study, **first).figure,
                                         "parameter importances"))
            except (ValueError, RuntimeError) as err:  # e.g. no parameter varied across the trials
                parts.append(note(f"Parameter importances unavailable: {str(err).splitlines()[0]}"))
    return "".join(parts)


def trial_history(checkpoint: str) -> list[dict]:
    """Per-epoch metrics of a trial: the history saved in its last epoch's checkpoint (a sibling of the best one)."""
    from leukmodels.checkpoint import CHECKPOINT_FILE, load_checkpoint, resolve_checkpoint  # here: torch, +2-4 s

    if storage.is_uri(checkpoint):  # the newest of the trial's checkpoint folders in the storage, else the best
        return _remote_history(checkpoint)
    best = resolve_checkpoint(checkpoint)
    if not best.exists() and best.suffix != ".pt":  # a checkpoint folder that is gone: its siblings may remain
        best = best / CHECKPOINT_FILE
    run_dir = best.parent.parent  # epoch_XXXX/ (fit) or checkpoint_<time>/ (Ray) folders of one run; the best one may
    siblings = sorted(run_dir.glob(f"*/{CHECKPOINT_FILE}")) if run_dir.is_dir() else []  # be gone (num_to_keep)
    for path in [*reversed(siblings), best]:  # the newest epoch first; the best one as the fallback
        try:
            payload = load_checkpoint(path)
        except (OSError, ValueError):
            continue
        return list(payload.get("extra", {}).get("history") or [payload.get("metrics", {})])
    return []


def _remote_history(checkpoint: str) -> list[dict]:
    """trial_history of a checkpoint at a storage URI: the newest sibling folder (or the best one) fetched once."""
    from leukmodels.checkpoint import load_checkpoint  # here: torch, see trial_history

    try:
        candidates = [*reversed([u for u in storage.siblings(checkpoint) if "/checkpoint_" in u]), checkpoint]
    except (OSError, ValueError):
        candidates = [checkpoint]
    for uri in candidates:
        try:
            payload = load_checkpoint(storage.local_copy(uri))
        except (OSError, ValueError):
            continue
        return list(payload.get("extra", {}).get("history") or [payload.get("metrics", {})])
    return []


def learning_curves_section(rows: pd.DataFrame, top: int) -> str:
    fig, (ax_score, ax_loss) = new_figure(1, 2, figsize=(11, 3.8))
    drawn = []
    for _, row in rows.head(top).iterrows():
        history = pd.DataFrame(trial_history(row["checkpoint"])) if isinstance(row["checkpoint"], str) else None
        if history is None or history.empty or "epoch" not in history:
            continue
        if "epochs_run" in row and not missing(row["epochs_run"]):  # an ASHA-stopped worker may finish one more
            history = history[history["epoch"] <= int(row["epochs_run"])]  # epoch than the search ever saw
        label = f"{row['trial_id']} ({row['family']})"
        line, = ax_score.plot(history["epoch"], history["weighted_f1"], marker="o", label=label)
        ax_loss.plot(history["epoch"], history["val_loss"], marker="o", color=line.get_color(), label=f"{label} val")
        ax_loss.plot(history["epoch"], history["train_loss"], ls="--", color=line.get_color())
        drawn.append(row["trial_id"])
    if not drawn:
        plt.close(fig)
        return note("No per-epoch history found in the trials' checkpoints.")
    ax_score.set(xlabel="epoch", ylabel="validation weighted F1", ylim=(0, 1), title="validation score")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="val loss (solid), train loss (dashed)")
    ax_score.legend(fontsize=8)
    return figure_html(fig, "learning curves")


def winner_section(test_rows: pd.DataFrame, preds: pd.DataFrame, worst: int) -> str:
    plain = test_rows[(test_rows["val_rank"] == 1) & ~test_rows["retrained"]]
    if plain.empty:
        return note("The validation winner was not evaluated on the test patients.")
    chosen = plain.sort_values("tta").iloc[-1]  # with TTA when it was evaluated with it
    mine = preds[(preds["trial_id"] == chosen["trial_id"]) & (preds["tta"] == chosen["tta"])
                 & ~preds["retrained"]].reset_index(drop=True)
    what = f"{chosen['trial_id']} ({chosen['family']}), {'with' if chosen['tta'] else 'without'} 8-way TTA"
    parts = [f"<p>Winner on validation: <b>{html.escape(what)}</b>; {len(mine)} test cells from "
             f"{mine['patient'].nunique()} patients ({html.escape(str(chosen['test_source']))}).</p>"]
    ensembles = ensembles_beside(test_rows, preds, chosen)
    if ensembles:
        parts.append(versus_table(chosen, [row for row, _ in ensembles]))
    return "".join(parts + [roc_and_confusion(chosen, mine, ensembles), per_patient_figure(mine),
                            most_wrong_grid(mine, worst)])


def roc_and_confusion(chosen: pd.Series, mine: pd.DataFrame, ensembles: list[tuple]) -> str:
    """The winner's ROC curve on the test patients beside every ensemble's, and its confusion matrix."""
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # here: scikit-learn, measured +1.7 s

    labels, prob = mine["label"].to_numpy(), mine["prob_all"].to_numpy()
    fig, (ax_roc, ax_cm) = new_figure(1, 2, figsize=(10, 4))
    if len(np.unique(labels)) == 2:
        RocCurveDisplay.from_predictions(labels, prob, pos_label=ALL, name=f"winner {chosen['trial_id']}", ax=ax_roc)
        for row, theirs in ensembles:  # same cells in the same order: evaluate writes every model's rows alike
            RocCurveDisplay.from_predictions(labels, theirs["prob_all"].to_numpy(), pos_label=ALL,
                                             name=str(row["trial_id"]), ax=ax_roc)
        ax_roc.plot([0, 1], [0, 1], ls=":", color="grey")
    else:
        ax_roc.text(0.5, 0.5, "ROC needs both classes", ha="center")
    ax_roc.set_title("ROC on test patients")
    ConfusionMatrixDisplay.from_predictions(labels, (prob > 0.5).astype(int), labels=[HEM, ALL],
                                            display_labels=[CLASS_NAMES[HEM], CLASS_NAMES[ALL]], ax=ax_cm, colorbar=False)
    ax_cm.set_title("winner's confusion matrix (threshold 0.5)")
    return figure_html(fig, "ROC curve and confusion matrix")


def per_patient_figure(mine: pd.DataFrame) -> str:
    """The winner's accuracy on each test patient, worst first, coloured by the patient's class."""
    labels = mine["label"].to_numpy()
    correct = (mine["prob_all"].to_numpy() > 0.5).astype(int) == labels
    per_patient = (pd.DataFrame({"patient": mine["patient"], "label": labels, "correct": correct})
                   .groupby("patient").agg(accuracy=("correct", "mean"), label=("label", "max"), cells=("correct",
                                                                                                     "size"))
                   .sort_values("accuracy"))
    fig, ax = new_figure(figsize=(max(5, 0.45 * len(per_patient)), 3.5))
    colours = ["tab:red" if lab == ALL else "tab:blue" for lab in per_patient["label"]]
    ax.bar(per_patient.index.astype(str), per_patient["accuracy"], color=colours)
    ax.set(ylim=(0, 1), ylabel="accuracy", title="per-patient accuracy (red: ALL patients, blue: HEM)")
    ax.tick_params(axis="x", rotation=90)
    return figure_html(fig, "per-patient accuracy")


def ensembles_beside(test_rows: pd.DataFrame, preds: pd.DataFrame, winner: pd.Series) -> list[tuple]:
    """[(row, predictions)] of every ensemble evaluated in the winner's TTA mode, fewest members first."""
    if "family" not in test_rows:
        return []
    rows = test_rows[(test_rows["family"] == ENSEMBLE_FAMILY) & (test_rows["tta"] == winner["tta"])]
    found = []
    for _, row in rows.sort_values("n_members").iterrows():
        mine = preds[(preds["trial_id"] == row["trial_id"]) & (preds["tta"] == row["tta"]) & ~preds["retrained"]]
        found += [(row, mine.reset_index(drop=True))] if len(mine) else []
    return found


def versus_table(winner: pd.Series, ensembles: Sequence[pd.Series]) -> str:
    """The validation winner and each ensemble side by side on the same test cells."""
    frame = pd.DataFrame([{**winner.to_dict(), "model": "validation winner", "members": winner["trial_id"]}] + [
        {**row.to_dict(), "model": str(row["trial_id"]), "members": ", ".join(json.loads(row["members"]))}
        for row in ensembles])
    return ("<h3>Ensembles beside the winner</h3>" + note("An ensemble's P(ALL) of a test cell is the mean of its "
            "members' P(ALL) (each trial at its own image size), called ALL above 0.5.")
            + table_html(frame, VERSUS_COLUMNS))


def most_wrong_grid(preds: pd.DataFrame, count: int) -> str:
    """Thumbnails of the `count` test cells with the largest |label - P(ALL)|, titled with truth and P(ALL)."""
    worst = preds.assign(error=(preds["label"] - preds["prob_all"]).abs()).nlargest(count, "error")
    if worst.empty:
        return note("No test cells.")
    columns = min(8, len(worst))
    rows = -(-len(worst) // columns)
    fig, axes = new_figure(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    missing = 0
    for ax, (_, cell) in zip(axes.ravel(), worst.iterrows()):
        try:
            with Image.open(cell["path"]) as image:
                ax.imshow(image.convert("RGB").resize((96, 96)))
        except OSError:
            missing += 1
            ax.text(0.5, 0.5, "image\nunreadable", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"true {CLASS_NAMES[int(cell['label'])]} P(ALL)={cell['prob_all']:.2f}\npatient {cell['patient']}",
                     fontsize=7)
    head = f"<h3>The {len(worst)} test cells it got most wrong</h3>"
    return head + figure_html(fig, "most wrong test cells") + (note(f"{missing} image(s) could not be read.")
                                                               if missing else "")
