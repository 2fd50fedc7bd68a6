"""Model families for telling leukemic blasts (ALL, logit index 1) from normal cells (HEM, index 0).

A timm-style decorator registry (`registry.py`): each family module defines one `nn.Module` class registered with
`@register_family("name")` and a pure define-by-run `search_space(trial) -> dict` next to it.

    model = build_model(config)                              # a TrainConfig's model
    model = create_model("resnet", **model_kwargs(config))   # every model-shaping config key may be passed
    search_space("resnet", optuna_trial)                     # -> {"filters": 32, "depth": 2, "block": "basic", ...}

Every model maps uint8-derived float images N x 3 x S x S (S = image_size) to logits N x 2, exposes
`num_parameters()`, and raises `ValueError` naming the bad value at construction when a config cannot work.
"""
from leukmodels.models.registry import (NUM_CLASSES, ParameterCountMixin, build_model, count_parameters, create_model,
                                        list_families, register_family, search_space)
from leukmodels.models import baseline, inception, resnet, torchvision_backbones  # noqa: F401  (importing registers)

__all__ = ["build_model", "create_model", "list_families", "search_space", "register_family", "count_parameters",
           "ParameterCountMixin", "NUM_CLASSES"]
