"""Model families: one forward/backward test parametrised over the registry, size checks, pretrained loading, search
spaces. Small configs so the whole file runs in seconds on CPU."""
from __future__ import annotations

import math

import optuna
import pytest
import torch
import torchvision.models as tvm

from leukmodels.config import TrainConfig, model_kwargs
from leukmodels.models import count_parameters, create_model, list_families, search_space

# A small config per registered case; a family without an entry here fails test_every_family_has_a_case.
CASES = {
    "baseline": dict(family="baseline", filters=4, depth=3, kernel_size=5, fc_layers=2, dropout=0.1, image_size=32),
    "inception": dict(family="inception", filters=4, depth=3, dropout=0.1, image_size=32),
    "resnet-basic": dict(family="resnet", filters=4, depth=2, stages=3, block="basic", dropout=0.1, image_size=32),
    "resnet-bottleneck": dict(family="resnet", filters=4, depth=1, stages=3, block="bottleneck", image_size=32),
    "torchvision-resnet18": dict(family="torchvision", backbone="resnet18", dropout=0.1, image_size=32),
    "torchvision-googlenet": dict(family="torchvision", backbone="googlenet", dropout=0.1, image_size=32),
}


def build(case: dict) -> torch.nn.Module:
    config = dict(case)
    return create_model(config.pop("family"), **config)


def test_every_family_has_a_case():
    assert set(list_families()) >= {"baseline", "inception", "resnet", "torchvision"}
    assert set(list_families()) == {case["family"] for case in CASES.values()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_backward(name):
    torch.manual_seed(0)
    case = CASES[name]
    model = build(case).train()
    size = case["image_size"]
    x = torch.randn(3, 3, size, size)
    logits = model(x)
    assert logits.shape == (3, 2)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {pname} has a non-finite gradient"
    # The gradient reaches the input layer (not only the head): the first parameter in module order is the first conv.
    first = next(model.parameters())
    assert first.grad.abs().sum() > 0, f"{name}: no gradient at the first layer"
    assert model.num_parameters() == count_parameters(model) == sum(p.numel() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 2)  # eval mode (BN running stats) returns plain logits too


@pytest.mark.parametrize("family", ["baseline", "inception", "resnet"])
def test_parameter_count_grows_with_filters_and_depth(family):
    small = dict(filters=8, depth=2, image_size=64)
    n = create_model(family, **small).num_parameters()
    assert create_model(family, **{**small, "filters": 16}).num_parameters() > n
    assert create_model(family, **{**small, "depth": 3}).num_parameters() > n


def test_torchvision_parameter_count_grows_with_backbone_depth():
    counts = [create_model("torchvision", backbone=b, image_size=64).num_parameters()
              for b in ("resnet18", "resnet34", "resnet50")]
    assert counts == sorted(counts) and len(set(counts)) == 3


def test_create_model_takes_a_whole_config():
    for family in list_families():
        config = TrainConfig(family=family)
        model = create_model(config.family, **model_kwargs(config), num_classes=2)
        with torch.no_grad():
            assert model.eval()(torch.zeros(1, 3, config.image_size, config.image_size)).shape == (1, 2)


@pytest.mark.parametrize("family, kwargs, named", [
    ("baseline", dict(depth=5, image_size=16), "image_size=16"),  # five 2x2 pools: 16 -> 0
    ("baseline", dict(depth=6), "depth=6"),
    ("baseline", dict(depth=1), "depth=1"),
    ("baseline", dict(kernel_size=4), "kernel_size=4"),
    ("baseline", dict(filters=0), "filters=0"),
    ("baseline", dict(fc_layers=3), "fc_layers=3"),
    ("inception", dict(depth=9, image_size=32), "image_size=32"),  # stem /4 then 4 pools: 32 -> 0
    ("inception", dict(depth=10), "depth=10"),
    ("inception", dict(filters=0), "filters=0"),
    ("resnet", dict(stages=6, image_size=64), "image_size=64"),  # stem /4 then 5 stride-2 stages: 64 -> 1 -> ?
    ("resnet", dict(stages=3, image_size=4), "image_size=4"),
    ("resnet", dict(block="dense"), "block='dense'"),
    ("resnet", dict(depth=0), "depth=0"),
    ("resnet", dict(filters=-1), "filters=-1"),
    ("resnet", dict(dropout=1.0), "dropout=1.0"),
    ("torchvision", dict(backbone="vgg16"), "backbone='vgg16'"),
    ("torchvision", dict(backbone="inception_v3", image_size=74), "image_size=74"),
    ("torchvision", dict(backbone="resnet18", image_size=16), "image_size=16"),
])
def test_impossible_configs_raise_naming_the_value(family, kwargs, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        create_model(family, **kwargs)


def test_boundary_configs_still_build():
    # The checks are exact, not conservative: these leave a 1 x 1 last feature map and run.
    for family, kwargs in [("baseline", dict(depth=5, image_size=32)), ("inception", dict(depth=9, image_size=64)),
                           ("resnet", dict(stages=5, image_size=64, filters=2, depth=1)),
                           ("torchvision", dict(backbone="inception_v3", image_size=75))]:
        model = create_model(family, **kwargs).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, kwargs["image_size"], kwargs["image_size"])).shape == (1, 2)


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown model family 'vgg'.*baseline.*resnet"):
        create_model("vgg")
    with pytest.raises(ValueError, match="filtres"):
        create_model("resnet", filtres=16)  # a typo is not silently dropped


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model"])
def test_pretrained_round_trip(tmp_path, wrap):
    torch.manual_seed(1)
    source = tvm.resnet18(weights=None)  # an ImageNet-shaped net: 1000-class fc head
    state = source.state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(state if wrap == "plain" else {wrap: state, "epoch": 3}, path)

    model = create_model("torchvision", backbone="resnet18", pretrained=str(path), image_size=32)
    loaded = model.backbone.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(loaded[key], value), key
    assert loaded["fc.1.weight"].shape == (2, 512)  # a fresh two-class head, not the 1000-class one
    fresh = create_model("torchvision", backbone="resnet18", image_size=32)
    assert not torch.equal(fresh.backbone.conv1.weight, model.backbone.conv1.weight)


def test_pretrained_googlenet_ignores_aux_heads(tmp_path):
    source = tvm.googlenet(weights=None, aux_logits=True, init_weights=True)  # as torchvision ships it: aux1/aux2
    path = tmp_path / "googlenet.pth"
    torch.save(source.state_dict(), path)
    model = create_model("torchvision", backbone="googlenet", pretrained=str(path), image_size=32)
    assert torch.equal(model.backbone.conv1.conv.weight, source.conv1.conv.weight)


def test_pretrained_file_that_does_not_fit_raises(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match="nope.pt"):
        create_model("torchvision", backbone="resnet18", pretrained=str(missing))

    other = tmp_path / "resnet50.pt"  # a different backbone: bottleneck keys and shapes
    torch.save(tvm.resnet50(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match=r"resnet50\.pt.*does not fit backbone 'resnet18'"):
        create_model("torchvision", backbone="resnet18", pretrained=str(other))

    state = tvm.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    reshaped = tmp_path / "reshaped.pt"
    torch.save(state, reshaped)
    with pytest.raises(ValueError, match=r"reshaped\.pt.*conv1\.weight"):
        create_model("torchvision", backbone="resnet18", pretrained=str(reshaped))

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        create_model("torchvision", backbone="resnet18", pretrained=str(garbage))


def test_meta_device_construction_checks_configs(tmp_path):
    # The search layer validates configs by building on the meta device: checks (pretrained fit included) still run.
    path = tmp_path / "resnet18.pt"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    counts = {name: build(case).num_parameters() for name, case in CASES.items()}
    with torch.device("meta"):
        assert {name: build(case).num_parameters() for name, case in CASES.items()} == counts
        model = create_model("torchvision", backbone="resnet18", pretrained=str(path), image_size=32)
        assert next(model.parameters()).is_meta
        with pytest.raises(ValueError, match=r"resnet18\.pt.*does not fit backbone 'resnet50'"):
            create_model("torchvision", backbone="resnet50", pretrained=str(path), image_size=32)
        with pytest.raises(ValueError, match="image_size=16"):
            create_model("resnet", stages=4, image_size=16)


@pytest.mark.parametrize("family", ["baseline", "inception", "resnet", "torchvision"])
def test_search_space_samples_build_valid_models(family):
    # A real in-memory study: each sampled config must construct at 96 and 224 px and run at 96 px.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        trial = study.ask()
        config = search_space(family, trial)
        assert config and set(config) <= set(TrainConfig().to_dict()), config
        assert config == {k: trial.params[k] for k in config}  # returned values are exactly the sampled ones
        for size in (96, 224):
            model = create_model(family, **config, image_size=size)
            assert model.num_parameters() > 0
        with torch.no_grad():
            assert model.eval()(torch.zeros(1, 3, 96, 96)).shape == (1, 2)  # type: ignore[possibly-undefined]
        study.tell(trial, 0.5)


def test_search_spaces_of_all_families_share_one_tpe_study():
    # Families reuse names (filters, depth) with family-specific ranges; TPE must cope across 30 mixed trials.
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for i in range(30):
        trial = study.ask()
        family = trial.suggest_categorical("family", list_families())
        config = search_space(family, trial)
        study.tell(trial, math.sin(i) + len(config))
    assert len(study.trials) == 30
    assert {t.params["family"] for t in study.trials} == set(list_families())


def test_fixed_trial_pins_the_config():
    trial = optuna.trial.FixedTrial({"filters": 16, "block": "bottleneck", "depth": 3, "stages": 4})
    assert search_space("resnet", trial) == {"filters": 16, "block": "bottleneck", "depth": 3, "stages": 4}
    create_model("resnet", **search_space("resnet", trial), image_size=64)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    for name in ("baseline", "inception", "resnet-basic"):
        model = build(CASES[name]).eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            expected = model(x)
            got = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _autocast_step(device: str, names: list[str]) -> None:
    torch.manual_seed(0)
    for name in names:
        model = build(CASES[name]).to(device, memory_format=torch.channels_last).train()
        x = torch.randn(4, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 0, 1], device=device))
        loss.backward()
        assert logits.shape == (4, 2) and torch.isfinite(logits.float()).all(), name
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), name


def test_bf16_autocast_channels_last_cpu():
    _autocast_step("cpu", [n for n in sorted(CASES) if not n.startswith("torchvision")])  # CPU bf16 is slow


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_channels_last_cuda():
    _autocast_step("cuda", sorted(CASES))
