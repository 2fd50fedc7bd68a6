"""Warm start: the best configs of an earlier search become the first trials of a new one.

    points = warm_start_points(settings, space, say)      # [{"lr": 3e-3, "resnet:filters": 24, ...}, ...]
    OptunaSearch(space=space, points_to_evaluate=points, ...)   # enqueued: Optuna asks them before it samples

The earlier search's configs come from its leaderboard rows, ranked by its own metric at each trial's best epoch
(its Optuna study only holds each trial's last value). Each row is replayed through the new define-by-run space with
a stand-in trial (`_Replay`) that answers every `suggest_*` with the row's value, so the mapping follows the space's
own conditionals (a bottleneck ResNet's shorter depth range, momentum only for sgd) and its family prefixes
(`resnet:filters` when several families are searched). On the way:
- a value outside a numeric range is clipped to it; a numeric choice that is not offered (an image size not in the
  new --image-sizes) moves to the nearest offered one; any other choice that is not offered is left to the sampler;
- a parameter the new search holds constant (one image size, one batch size) takes the new search's value;
- a parameter the new space does not have is dropped; a config of a family the new search does not have is skipped.
Every change is one console line.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import pandas as pd

from leukmodels.values import plain
from search.board import leaderboard
from search.board.paths import leaderboard_path
from search.board.settings import SearchSettings
from search.tuning.spaces import FAMILY_PREFIX_SEP, SearchSpace, check_buildable, train_config

TOP_CONFIGS = 3  # carried configs: the top 3 of the earlier search, at most half the new trials (at least one)
CARRIED_KEYS = ("family", "image_size", "batch_size")  # config fields a search may hold constant: always carried


def carried_limit(num_samples: int) -> int:
    """How many configs a search of `num_samples` trials takes from the earlier one: the rest stay the sampler's."""
    return min(TOP_CONFIGS, max(1, num_samples // 2))


class NotCarried(Exception):
    """A config that cannot run in the new search (its family is not searched there, or it does not build at the
    new sizes); the message says why."""


def _show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Replay:
    """A stand-in Optuna trial: each `suggest_*` returns the carried config's value, made to fit the distribution.

    config: the earlier config by TrainConfig name (`filters`, not `resnet:filters`). After the space has run,
    `point` holds the values to enqueue by the space's own names, `asked` the config names the space asked for and
    `notes` one line per change."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config, self.point, self.asked, self.notes = config, {}, set(), []

    def _carried(self, name: str) -> Any:
        key = name.split(FAMILY_PREFIX_SEP, 1)[-1]  # "resnet:filters" -> "filters"
        self.asked.add(key)
        return self.config.get(key)

    def _keep(self, name: str, value: Any, old: Any, why: str) -> Any:
        if value != old:
            self.notes.append(f"{name} {_show(old)} -> {_show(value)} ({why})")
        self.point[name] = value
        return value

    def _fit(self, name: str, low: float, high: float, step: Optional[float], whole: bool) -> Any:
        """The carried value of a numeric parameter inside [low, high] (on its step grid); `low` when the earlier
        config lacks it: the sampler then chooses it, and the replay goes on with any value."""
        old = self._carried(name)
        if not _numeric(old):
            return int(low) if whole else low
        value = min(max(old, low), high)
        if step:
            value = low + round((value - low) / step) * step
        inside = low <= old <= high  # then only a step grid can move it
        why = f"onto the step-{step:g} grid" if inside and step else f"outside [{low:g}, {high:g}]: clipped"
        return self._keep(name, int(round(value)) if whole else float(value), old, why)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._fit(name, low, high, step if step > 1 else None, whole=True)

    def suggest_float(self, name: str, low: float, high: float, *, step: Optional[float] = None,
                      log: bool = False) -> float:
        return self._fit(name, low, high, step, whole=False)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        choices, old = list(choices), self._carried(name)
        if old is None:
            return choices[0]
        if old in choices:
            return self._keep(name, old, old, "")
        if name == "family":
            raise NotCarried(f"family {old} is not searched here")
        if _numeric(old) and all(_numeric(c) for c in choices):  # an image or batch size: the nearest offered
            nearest = min(choices, key=lambda c: (abs(c - old), c))
            return self._keep(name, nearest, old, f"not offered {choices}: the nearest")
        self.notes.append(f"{name} {_show(old)} dropped (not offered {choices}): the sampler chooses")
        return choices[0]


def map_config(config: dict[str, Any], space: Callable[[Any], Optional[dict]]) -> tuple[dict, dict, list[str]]:
    """(the point to enqueue in the new search, the trial config it gives, one note per change) for an earlier
    config (TrainConfig names). NotCarried when its family is not searched there."""
    replay = _Replay(config)
    constants = space(replay) or {}
    notes = replay.notes
    for key, old in config.items():
        if key in replay.asked:
            continue
        if key not in constants:
            notes.append(f"{key} {_show(old)} dropped: not a parameter of this search")
        elif key == "family" and constants[key] != old:
            raise NotCarried(f"family {old} is not searched here")
        elif constants[key] != old:
            notes.append(f"{key} {_show(old)} -> {_show(constants[key])} (fixed in this search)")
    return replay.point, {**replay.point, **constants}, notes


def check_runs(trial_config: dict[str, Any]) -> None:
    """NotCarried when the mapped config would fail as a trial (e.g. too deep for a smaller image size)."""
    try:
        check_buildable(train_config(trial_config))
    except (TypeError, ValueError) as error:
        raise NotCarried(f"does not build here ({str(error).splitlines()[0]})") from None


def row_config(row: dict[str, Any]) -> dict[str, Any]:
    """The parameters an earlier leaderboard row was searched over, by TrainConfig name: those its family's space
    asks for on the row's own branch (a row holds every TrainConfig field, momentum of an adamw trial included),
    plus family, image size and batch size."""
    values = {key: plain(value) for key, value in row.items()}
    own = SearchSpace([values["family"]], image_sizes=[int(values["image_size"])],
                      batch_sizes=[int(values["batch_size"])])
    replay = _Replay({k: v for k, v in values.items() if v is not None})
    own(replay)
    return {key: values[key] for key in [*CARRIED_KEYS, *sorted(replay.asked - set(CARRIED_KEYS))]
            if values.get(key) is not None}


def ranked_rows(board: Any, search: str) -> Any:
    """The earlier search's rows that have a score, best first by its metric (the leaderboard's rank)."""
    mine = board[(board["search"] == search) & (board["status"] != "error")]
    scored = [plain(row[row["metric"]]) is not None for _, row in mine.iterrows()]
    return mine[pd.Series(scored, index=mine.index, dtype=bool)].sort_values("rank", kind="stable")


def points_from_rows(rows: Any, space: Any, limit: int) -> tuple[list[dict], list[str]]:
    """The first `limit` distinct points the ranked rows map to, and the console lines: one per change of a carried
    config, one summary of the configs skipped."""
    points: list[dict] = []
    lines: list[str] = []
    skipped: dict[str, int] = {}
    for _, row in rows.iterrows():
        if len(points) == limit:
            break
        label = f"{row['trial_id']} ({row['family']}, {row['metric']} {float(row[row['metric']]):.3f})"
        try:
            point, trial_config, notes = map_config(row_config(row.to_dict()), space)
            check_runs(trial_config)
        except NotCarried as why:
            skipped[str(why)] = skipped.get(str(why), 0) + 1
            continue
        if point in points:
            why = "the same point as a better config once mapped"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        points.append(point)
        lines += [f"{label}: {note}" for note in notes]
    if skipped:
        lines.append("skipped " + ", ".join(f"{count} config(s): {why}" for why, count in skipped.items()))
    return points, lines


def check_warm_start(name: str, search: str, results: str, families: list[str]) -> None:
    """Before Ray starts: --warm-start `name` is another search than `search` in the leaderboard of `results`, with
    a scored trial of one of `families` (those searched here). ValueError naming the flag otherwise."""
    path = leaderboard_path(results)
    if name == search:
        raise ValueError(f"--warm-start {name}: that is this search's own name; name an earlier search")
    if not leaderboard.exists(path):
        raise ValueError(f"--warm-start {name}: no leaderboard at {path} (is --results the same as that search's?)")
    board = leaderboard.read(path)
    if not (board["search"] == name).any():
        known = list(dict.fromkeys(board.sort_values("started_at", ascending=False)["search"]))
        raise ValueError(f"--warm-start {name}: no such search in {path} (searches there: "
                         f"{', '.join(known[:5]) or 'none'}{', ...' if len(known) > 5 else ''})")
    rows = ranked_rows(board, name)
    if rows.empty:
        raise ValueError(f"--warm-start {name}: none of its trials has a score to rank by")
    if not rows["family"].isin(families).any():
        raise ValueError(f"--warm-start {name}: its trials are {', '.join(sorted(set(rows['family'])))}; this search "
                         f"has {', '.join(families)}: add the family or warm-start from another search")


def warm_start_points(settings: SearchSettings, space: Any, say: Callable[[str], None] = print) -> list[dict]:
    """The configs the new search runs first (see the module docstring), said on the console."""
    rows = ranked_rows(leaderboard.read(leaderboard_path(settings.results)), settings.warm_start)
    limit = carried_limit(settings.num_samples)
    points, lines = points_from_rows(rows, space, limit)
    metric = rows["metric"].iloc[0] if len(rows) else "?"
    say(f"warm start: the first {len(points)} of {settings.num_samples} trials are the top configs of search "
        f"{settings.warm_start} by its {metric} (at most {limit}: top {TOP_CONFIGS}, at most half the trials)")
    for line in lines:
        say(f"warm start: {line}")
    return points


__all__ = ["warm_start_points", "check_warm_start", "map_config", "row_config", "points_from_rows",
           "carried_limit", "NotCarried", "TOP_CONFIGS"]
