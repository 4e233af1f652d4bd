"""The registries: lookup with "did you mean", option validation, listing, and every entry building."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from colorbench.backbones import build_model
from colorbench.components import BACKBONES, LOSSES, SPLITTERS
from colorbench.errors import ConfigError
from colorbench.registry import Registry


def test_unknown_name_lists_known_ones_and_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        BACKBONES.get("resnet18_6")
    assert "Did you mean 'resnet18-6'?" in str(info.value)
    assert "resnet18-6, resnet18-7, resnet18-8" in str(info.value)


def test_registering_twice_is_refused() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(lambda: 2)


def test_validate_fills_defaults_and_describe_lists_them() -> None:
    assert SPLITTERS.validate("kfold", {}) == {"k": 5}
    rows = {name: (opts, doc) for name, opts, doc in SPLITTERS.describe()}
    assert rows["kfold"][0] == "k=5, repeats=1"
    assert rows["holdout"][0] == "val_fraction=0.2"
    assert rows["kfold"][1]


@pytest.mark.parametrize(("name", "channels", "stride"), [("resnet18-6", 128, 8), ("resnet18-7", 256, 16), ("resnet18-8", 512, 32)])
def test_backbones_cut_resnet18_and_decode_to_full_resolution(name: str, channels: int, stride: int) -> None:
    encoder = BACKBONES.build(name)
    L = torch.rand(2, 1, 64, 64) * 100
    assert encoder(L).shape == (2, channels, 64 // stride, 64 // stride)
    assert encoder[0].in_channels == 1
    model = build_model(name, {}, out_channels=7)
    assert model(L).shape == (2, 7, 64, 64)
    assert model(torch.rand(1, 1, 48, 80) * 100).shape == (1, 7, 48, 80)  # sizes not divisible by the stride


def test_imagenet_weights_offline_give_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache, as on a fresh offline machine
    with pytest.raises(ConfigError, match="not in the local torch cache.*weights: none"):
        BACKBONES.build("resnet18-6", {"weights": "imagenet"})


def test_mse_loss_interface() -> None:
    mse = LOSSES.build("mse")
    assert mse.out_channels == 2
    ab = torch.randn(2, 2, 8, 8) * 30
    assert float(mse(ab / 110, ab)) == pytest.approx(0.0, abs=1e-10)
    assert torch.allclose(mse.decode(ab / 110), ab, atol=1e-4)
    pred = torch.zeros_like(ab)
    assert float(mse(pred, ab)) == pytest.approx(float((ab / 110).pow(2).mean()), rel=1e-5)
    weights = torch.zeros(2, 1, 8, 8)
    weights[:, :, :4] = 2.0
    assert float(mse(pred, ab, weights)) == pytest.approx(float((ab[:, :, :4] / 110).pow(2).mean()), rel=1e-5)


def test_labels_show_only_options_that_differ_from_defaults() -> None:
    assert LOSSES.label("mse", {}) == "mse"
    assert SPLITTERS.label("kfold", {"k": 5}) == "kfold"
    assert SPLITTERS.label("kfold", {"k": 5}, every=True) == "kfold(k=5)"
    filled = LOSSES.validate("bg-weighted", {"mask": "saliency"})
    assert LOSSES.label("bg-weighted", filled) == "bg-weighted(mask=saliency)"
    changed = LOSSES.validate("bg-weighted", {"mask": "saliency", "mask_options": {"size": 32}, "background_weight": 0.5})
    assert LOSSES.label("bg-weighted", changed) == "bg-weighted(mask=saliency,mask_options={'size': 32, 'sigma': 2.5, 'threshold': 1.0},background_weight=0.5)"
