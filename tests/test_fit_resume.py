"""`fit` resumed from a saved training state ends exactly where the uninterrupted training ends (on a CPU)."""

from __future__ import annotations

from pathlib import Path

import torch

from colorbench.backbones import build_model
from colorbench.config import Cell, expand
from colorbench.images import rows
from colorbench.lifecycle import states
from colorbench.lifecycle.prepare import prepare_data
from colorbench.losses import LOSSES
from colorbench.resolve import parse_experiment
from colorbench.train import fit


def test_resumed_fit_is_bit_identical_to_the_uninterrupted_one(tiny_grid: dict, tmp_path: Path) -> None:
    tiny_grid["train"].update(epochs=3, crop=0.8, checkpoint_every=2)
    exp = parse_experiment(tiny_grid)
    cell: Cell = expand(exp)[0]
    data = prepare_data(exp)
    train, val = rows(data.pool.images, list(range(12))), rows(data.pool.images, list(range(12, 18)))

    def run(resume: dict | None = None):
        torch.manual_seed(0)
        objective = LOSSES.build("mse", {})
        model = build_model("resnet18-6", {}, objective.out_channels)
        result = fit(model, objective, train, val, cell.train, resume=resume, save_state=lambda s: states.save_state(tmp_path / f"{s['epoch']}.pt", s))
        return result, model

    whole, model = run()
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["2.pt", "3.pt"]  # every checkpoint_every epochs, and the last
    resumed, again = run(resume=states.load_state(tmp_path / "2.pt"))  # loaded with weights_only=True, as a real resume
    drop = ("train_images_per_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in whole.history
    ]
    assert resumed.best_epoch == whole.best_epoch
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
