"""No leakage in the wiring: a real grid and a real search trial, spied on at what reaches training, validation and the prior.

`fit` (training and validation images, hence early stopping and the best checkpoint), every loss's `prepare` (the
statistics of the training fold) and `choose_decoding` (`train.decode`: the decoding chosen after training) are wrapped with
pytest's monkeypatch. The expected rows are recomputed here from the
data source, `carve_test` and the splitter alone: each fit must get exactly `pool[fold.train]` / `pool[fold.val]`, each
prepare exactly that fit's training rows, each decoding choice exactly that fit's validation rows, and no photo of the test set may reach any of them. The `n_train`, `n_val` and
`n_test` logged on every fold run are read back from MLflow. Under the `process` executor the spy is installed in each
spawned worker by its pool initializer and saves what it saw to a folder.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import TINY_GRID, rows_array
from mlflow.tracking import MlflowClient

from colorbench import tracking
from colorbench.components import LOSSES, SPLITTERS
from colorbench.config import Component, DataConfig
from colorbench.data import SOURCES
from colorbench.images import ImageSet
from colorbench.losses import Objective
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid
from colorbench.search.optimize import run_search
from colorbench.search.space import parse_search
from colorbench.splitters import carve_test

# Where the grid and the search look `fit` up when they train a fold, and the process executor's pool initializer, which
# the spy replaces to reach the spawned workers (the one place to retarget when that code moves).
FIT_TARGET = "colorbench.lifecycle.fold.fit"
CHOOSE_TARGET = "colorbench.lifecycle.fold.choose_decoding"
POOL_INIT_TARGET = "colorbench.lifecycle.executors.pin_gpu"
SPY_FOLDER = "COLORBENCH_TEST_SPY_FOLDER"
SEARCH = {
    "experiment": "leak-search",
    "data": {"source": "builtin", "image_size": 32, "crops_per_photo": 2},
    "train": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3},
    "test_fraction": 0.25,
    "loss": "ce-rebalanced",
    "splitter": {"name": "kfold", "k": 2},
    "space": {"train.lr": {"loguniform": [3.0e-4, 3.0e-3]}},
    "objective": {"metric": "val_auc_rebalanced", "direction": "maximize"},
    "sampler": "random",
    "pruner": "none",
}


def digest(rows: torch.Tensor | np.ndarray) -> str:
    array = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


@dataclass
class Spy:
    """What each fit call received (as arrays), the rows of each prepare call made during it, and the rows of each decoding
    choice made after it (as (index of that fit, rows)).

    With a `folder` (in a worker process) each fit's record is also written there once the fit returns."""

    fits: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    prepared: list[list[np.ndarray]] = field(default_factory=list)
    chosen: list[tuple[int, np.ndarray]] = field(default_factory=list)
    folder: Path | None = None

    def save_last(self) -> None:
        if self.folder is not None:
            (train, val), prepared = self.fits[-1], self.prepared[-1]
            np.savez(self.folder / f"{os.getpid()}-{len(self.fits)}.npz", train=train, val=val, prepared=np.stack(prepared))

    @classmethod
    def load(cls, folder: Path) -> Spy:
        """The records the workers saved in `folder`."""
        record = cls()
        for path in sorted(folder.glob("*.npz")):
            with np.load(path) as saved:
                record.fits.append((saved["train"], saved["val"]))
                record.prepared.append(list(saved["prepared"]))
        return record


def install_spy(record: Spy, setter: Callable[[object, str, object], None] = setattr) -> None:
    """Wrap `fit` and `choose_decoding` where the grid and the search call them, and `prepare` of every loss class that defines one."""
    module_name, name = FIT_TARGET.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original_fit: Callable = getattr(module, name)

    def fit(model, objective, train_images, val_images, cfg, *args, **kwargs):
        record.fits.append((rows_array(train_images), rows_array(val_images)))
        record.prepared.append([])
        result = original_fit(model, objective, train_images, val_images, cfg, *args, **kwargs)
        record.save_last()
        return result

    setter(module, name, fit)
    original_choose: Callable = getattr(module, CHOOSE_TARGET.rsplit(".", 1)[1])

    def choose_decoding(model, objective, val_images, *args, **kwargs):
        record.chosen.append((len(record.fits) - 1, rows_array(val_images)))
        return original_choose(model, objective, val_images, *args, **kwargs)

    setter(module, CHOOSE_TARGET.rsplit(".", 1)[1], choose_decoding)
    classes = {Objective, *(LOSSES.get(name) for name in LOSSES if isinstance(LOSSES.get(name), type))}
    for cls in classes:
        if "prepare" in vars(cls):
            setter(cls, "prepare", wrap_prepare(vars(cls)["prepare"], record))


def wrap_prepare(original: Callable, record: Spy) -> Callable:
    def prepare(self, train_rgb: torch.Tensor) -> None:
        assert record.prepared, "prepare was called outside fit"
        record.prepared[-1].append(rows_array(train_rgb))
        return original(self, train_rgb)

    return prepare


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """The spy installed in this process (undone after the test)."""
    record = Spy()
    install_spy(record, monkeypatch.setattr)
    return record


def spying_worker_init(*args: object) -> None:
    """Pool initializer of the process executor's (spawned) workers: the original one, then the spy, saving into SPY_FOLDER."""
    module_name, name = POOL_INIT_TARGET.rsplit(".", 1)
    getattr(importlib.import_module(module_name), name)(*args)  # unpatched in a fresh worker
    install_spy(Spy(folder=Path(os.environ[SPY_FOLDER])))


@dataclass
class Expected:
    data: ImageSet
    pool: ImageSet
    test: np.ndarray  # indices into data


def expected_split(source: DataConfig, test_fraction: float, seed: int) -> Expected:
    data = SOURCES.build(source.source, source.options)
    rest, test = carve_test(data, test_fraction, seed)
    return Expected(data, data.subset(rest), test)


def check_no_leak(spy: Spy, expected: Expected, splitters: list[Component], seed: int) -> None:
    """The fits got exactly the folds' rows (as a multiset), each prepare its fit's training rows, no test photo anywhere."""
    name_of = {digest(row): name for row, name in zip(expected.data.images, expected.data.names, strict=True)}
    test_photos = {expected.data.names[i] for i in expected.test}
    for train, val in spy.fits:
        seen = [name_of.get(digest(row)) for row in np.concatenate([train, val])]
        assert None not in seen, "fit got a row that is not an image of the data source"
        assert not test_photos & set(seen), f"test photos reached training or validation: {sorted(test_photos & set(seen))}"
    pool = expected.pool
    folds = [fold for s in splitters for fold in SPLITTERS.build(s.name, s.options).split(pool, seed)]
    want = sorted((digest(pool.images[f.train]), digest(pool.images[f.val])) for f in folds)
    got = sorted((digest(train), digest(val)) for train, val in spy.fits)
    assert got == want, "the rows given to fit are not exactly pool[fold.train] / pool[fold.val] of the folds"
    for (train, _), prepared in zip(spy.fits, spy.prepared, strict=True):
        assert prepared and all(np.array_equal(rows, train) for rows in prepared), "prepare saw other rows than the fold's training rows"
    for fit_index, rows in spy.chosen:
        assert not test_photos & {name_of.get(digest(row)) for row in rows}, "test photos reached the choice of the decoding"
        assert np.array_equal(rows, spy.fits[fit_index][1]), "the decoding was chosen on other rows than the fold's validation rows"


def check_logged_counts(experiment: str, usable: int, n_test: int, n_folds: int) -> None:
    """Every fold run logs n_train + n_val + n_test = the usable images, with the test set's size as n_test."""
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'fold'")
    assert len(runs) == n_folds
    for run in runs:
        params = {k: int(run.data.params[k]) for k in ("n_train", "n_val", "n_test")}
        assert params["n_test"] == n_test and sum(params.values()) == usable, params


def test_grid_trains_and_validates_on_the_fold_rows_only(spy: Spy, tracking_uri: str) -> None:
    grid = copy.deepcopy(TINY_GRID)
    grid["train"]["epochs"] = 1
    exp = parse_experiment(grid)
    outcomes, _ = run_grid(exp, tracking_uri)
    assert not any(o.failure for o in outcomes)
    expected = expected_split(exp.data, exp.test_fraction, exp.seed)
    check_no_leak(spy, expected, [o.cell.splitter for o in outcomes], exp.seed)
    mlflow.set_tracking_uri(tracking_uri)
    check_logged_counts(exp.experiment, len(expected.data), len(expected.test), n_folds=3)


def test_decoding_is_chosen_on_the_validation_rows_only(spy: Spy, tracking_uri: str) -> None:
    grid = copy.deepcopy(TINY_GRID)
    grid["train"].update(epochs=1, decode={"choose": "val_psnr", "min_colorfulness_ratio": 0.6, "chroma_scales": [1.0, 1.5]})
    grid["grid"]["splitter"] = [{"name": "kfold", "k": 2}]
    exp = parse_experiment(grid)
    outcomes, _ = run_grid(exp, tracking_uri)
    assert not any(o.failure for o in outcomes)
    assert [i for i, _ in spy.chosen] == [0, 1], "each fold must choose its decoding once, after its fit"
    check_no_leak(spy, expected_split(exp.data, exp.test_fraction, exp.seed), [o.cell.splitter for o in outcomes], exp.seed)


def test_search_trial_trains_and_validates_on_the_fold_rows_only(spy: Spy, tracking_uri: str, tmp_path: Path) -> None:
    search = parse_search(copy.deepcopy(SEARCH))
    outcome = run_search(search, n_trials=1, tracking_uri=tracking_uri, out_dir=tmp_path / "figures")
    assert outcome.counts["COMPLETE"] == 1
    cfg = search.config
    expected = expected_split(cfg.data, cfg.test_fraction, cfg.seed)
    check_no_leak(spy, expected, [cfg.splitter], cfg.seed)
    assert sum(len(p) for p in spy.prepared) >= 2, "ce-rebalanced's prior must have been prepared once per fold"
    mlflow.set_tracking_uri(tracking_uri)
    check_logged_counts(cfg.experiment, len(expected.data), len(expected.test), n_folds=2)


@pytest.mark.processes  # worker processes: run with `pytest -m processes`, kept out of the 10-minute suite
def test_process_executor_trains_and_validates_on_the_fold_rows_only(tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = copy.deepcopy(TINY_GRID)
    grid["train"]["epochs"] = 1
    grid["grid"]["splitter"] = [{"name": "kfold", "k": 2}]
    exp = parse_experiment(grid)
    monkeypatch.setenv(SPY_FOLDER, str(tmp_path))
    monkeypatch.setattr(POOL_INIT_TARGET, spying_worker_init)
    outcomes, _ = run_grid(exp, tracking_uri, "process", {"workers": 1})
    assert not any(o.failure for o in outcomes)
    record = Spy.load(tmp_path)
    assert len(record.fits) == 2, "the workers' spy saw no fits"
    expected = expected_split(exp.data, exp.test_fraction, exp.seed)
    check_no_leak(record, expected, [o.cell.splitter for o in outcomes], exp.seed)
    mlflow.set_tracking_uri(tracking_uri)
    check_logged_counts(exp.experiment, len(expected.data), len(expected.test), n_folds=2)
