"""The search space: common training parameters + each family's own fields, as ONE define-by-run function.

OptunaSearch calls `SearchSpace(...)(trial)` once per Tune trial. The call is pure (only `trial.suggest_*` and
conditionals); what it samples plus the constants it returns become the Tune trial's config, which the trial turns
into a `TrainConfig` with `train_config(config)`.

Parameter names are TrainConfig field names. With several families in one search, `family` is a categorical and each
family's fields are suggested under a prefixed name (`resnet:filters`, `baseline:filters`): the families give `filters`
and `depth` different ranges, and Optuna must not mix those distributions across trials. The returned constants map
the prefixed values back onto the TrainConfig names; `train_config()` drops the prefixed copies.

`SearchSpace` is a class (not a closure) because Tune pickles the searcher, and with it this space, for `--resume`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from leukmodels.config import OPTIMIZERS, TrainConfig, config_fields
from leukmodels.models import list_families, search_space
from search.tuning.feasible import FittingTrial, check_buildable  # noqa: F401 - spaces is where callers look for it

FAMILY_PREFIX_SEP = ":"  # "resnet:filters"; not "/" (Tune would unflatten that into nested dicts)

# Common ranges. lr on a log scale over the band where AdamW and SGD both train small CNNs from scratch.
LR_RANGE = (1e-4, 3e-2)
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)
DROPOUT_RANGE = (0.0, 0.5)
MOMENTUM_RANGE = (0.8, 0.99)  # sgd only
AUG_RANGE = (0.0, 1.0)


class _PrefixedTrial:
    """Forwards `suggest_*` to an Optuna trial under `"<family>:<name>"`, so families can share field names."""

    def __init__(self, trial: Any, prefix: str) -> None:
        self._trial, self._prefix = trial, prefix

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return method
        return lambda param, *args, **kwargs: method(self._prefix + param, *args, **kwargs)


@dataclass
class SearchSpace:
    """Callable define-by-run space for `OptunaSearch(space=SearchSpace(...))`.

    families: model families searched (one -> a constant; several -> a categorical `family`).
    image_sizes: candidate S (one -> a constant). batch_sizes: per-worker batch candidates.
    epochs: the cosine schedule's length = the search's max epochs (ASHA may stop a trial before).
    """

    families: Sequence[str]
    image_sizes: Sequence[int] = (32,)
    batch_sizes: Sequence[int] = (32, 64, 128)
    epochs: int = 4
    seed: int = 0
    warmup_epochs: float = 0.5
    fixed: dict[str, Any] = field(default_factory=dict)  # any TrainConfig field pinned for every trial

    def __post_init__(self) -> None:
        self.families = list(self.families)
        self.image_sizes = [int(s) for s in self.image_sizes]
        self.batch_sizes = [int(b) for b in self.batch_sizes]
        known = list_families()
        unknown = [f for f in self.families if f not in known]
        if not self.families or unknown:
            raise ValueError(f"--family {' '.join(unknown) or '(none)'}: unknown; known families: {known} or 'all'")
        if not self.image_sizes or min(self.image_sizes) < 8:
            raise ValueError(f"--image-sizes {self.image_sizes}: need at least one size >= 8")
        bad_fixed = sorted(set(self.fixed) - set(config_fields()))
        if bad_fixed:
            raise ValueError(f"fixed config key(s) {bad_fixed} are not TrainConfig fields")

    def __call__(self, trial: Any) -> dict[str, Any]:
        constants: dict[str, Any] = {"epochs": int(self.epochs), "seed": int(self.seed),
                                     "warmup_epochs": float(self.warmup_epochs), **self.fixed}
        size = self.image_sizes[0] if len(self.image_sizes) == 1 else None  # known before the family draws

        def fitting(family_trial: Any) -> Any:  # never a depth the image cannot hold (search/tuning/feasible.py)
            return FittingTrial(family_trial, family, size) if size else family_trial

        if len(self.families) == 1:
            family = self.families[0]
            constants["family"] = family
            constants.update(search_space(family, fitting(trial)))
        else:
            family = trial.suggest_categorical("family", self.families)
            constants.update(search_space(family, fitting(_PrefixedTrial(trial, family + FAMILY_PREFIX_SEP))))
        if len(self.image_sizes) == 1:
            constants["image_size"] = self.image_sizes[0]
        else:
            trial.suggest_categorical("image_size", self.image_sizes)
        if len(self.batch_sizes) == 1:
            constants["batch_size"] = self.batch_sizes[0]
        else:
            trial.suggest_categorical("batch_size", self.batch_sizes)
        trial.suggest_float("lr", *LR_RANGE, log=True)
        trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True)
        trial.suggest_float("dropout", *DROPOUT_RANGE)
        optimizer = trial.suggest_categorical("optimizer", list(OPTIMIZERS))
        if optimizer == "sgd":
            trial.suggest_float("momentum", *MOMENTUM_RANGE)
        trial.suggest_float("aug_strength", *AUG_RANGE)
        return constants


def train_config(config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a Tune trial's config: drops the family-prefixed copies, rejects any other unknown key."""
    return TrainConfig.from_dict({k: v for k, v in config.items() if FAMILY_PREFIX_SEP not in k})


def sample_configs(space: SearchSpace, n: int, seed: int = 0) -> list[TrainConfig]:
    """Draw `n` configs from the space with Optuna's random sampler (no Ray): for tests and `--dry-run` style checks."""
    import optuna  # here: every Train worker imports this module (through trial.py) and never samples

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize")
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial)
        configs.append(train_config({**trial.params, **constants}))
        study.tell(trial, 0.0)
    return configs


def resolve_families(requested: Optional[Sequence[str]]) -> list[str]:
    """`--family` values -> family names: `all` expands to every registered family; unknown names are a ValueError."""
    known = list_families()
    requested = list(requested or [])
    if not requested:
        raise ValueError(f"--family is required: one or more of {known}, or 'all'")
    if "all" in requested:
        return known
    unknown = [f for f in requested if f not in known]
    if unknown:
        raise ValueError(f"--family {unknown[0]!r} is not a model family; choose from {known} or 'all'")
    return list(dict.fromkeys(requested))  # dedupe, keep order


__all__ = ["SearchSpace", "train_config", "check_buildable", "sample_configs", "resolve_families"]
