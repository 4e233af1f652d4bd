"""Colorizing with a trained tiny grid: run ids, checkpoints, full-resolution lightness, files and folders, the pyfunc model."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import TINY_GRID
from PIL import Image
from servers import free_port, wait_until_answering
from skimage.color import rgb2lab

import colorbench
from colorbench import cli
from colorbench.colorize import colorize_files, gray_image
from colorbench.config import parse_experiment
from colorbench.errors import ConfigError
from colorbench.runner import run_grid


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> dict[str, str]:
    """One kfold (k=2) cell trained once: its cell run id, a fold run id, a downloaded checkpoint; cwd is the store's folder."""
    folder = tmp_path_factory.mktemp("colorize")
    shutil.copy(empty_store, folder / "mlflow.db")
    grid = copy.deepcopy(TINY_GRID)
    grid["grid"]["splitter"] = [{"name": "kfold", "k": 2}]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        cell_run = run_grid(parse_experiment(grid), uri)[0][0].run_id
        mlflow.set_tracking_uri(uri)
        fold_run = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.`colorbench.role` = 'fold'")["run_id"].iloc[0]
        checkpoint = mlflow.artifacts.download_artifacts(run_id=fold_run, artifact_path="checkpoint.pt", dst_path=str(folder))
        yield {"uri": uri, "cell": cell_run, "fold": fold_run, "checkpoint": checkpoint, "folder": str(folder)}


def photo(h: int = 333, w: int = 517, seed: int = 0) -> np.ndarray:
    """A smooth colourful uint8 image of odd size."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(4 * y) * 0.5 + 0.5, x * y], axis=-1)
    noise = np.random.default_rng(seed).uniform(-0.05, 0.05, rgb.shape)
    return (np.clip(rgb + noise, 0, 1) * 255).round().astype(np.uint8)


def test_load_by_cell_run_fold_run_uri_and_checkpoint(trained: dict[str, str]) -> None:
    image = photo(40, 56)
    outputs = [
        colorbench.load(model, device="cpu").colorize(image)
        for model in (trained["cell"], trained["fold"], f"runs:/{trained['fold']}/checkpoint.pt", trained["checkpoint"])
    ]
    for out in outputs:
        assert out.shape == image.shape and out.dtype == np.uint8
    best = mlflow.search_runs(
        experiment_names=["tiny"], filter_string="tags.`colorbench.role` = 'fold'", order_by=["metrics.test_psnr DESC"]
    )
    by_best_fold = colorbench.load(best["run_id"].iloc[0], device="cpu").colorize(image)
    np.testing.assert_array_equal(outputs[0], by_best_fold)  # a cell run is its best fold


def test_unknown_model_is_a_clear_config_error(trained: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="neither a checkpoint file nor an MLflow run id"):
        colorbench.load("no-such-model.pt")
    with pytest.raises(ConfigError, match="cannot load the model of run 0{32}"):
        colorbench.load("0" * 32)


def test_output_keeps_size_and_the_inputs_own_lightness(trained: dict[str, str]) -> None:
    image = photo()
    out = colorbench.load(trained["checkpoint"], device="cpu").colorize(Image.fromarray(image))
    assert out.shape == (333, 517, 3)
    assert np.abs(rgb2lab(out)[..., 0] - rgb2lab(image)[..., 0]).max() <= 1.0


def test_colour_does_not_leak(trained: dict[str, str]) -> None:
    colorizer = colorbench.load(trained["checkpoint"], device="cpu")
    image = photo(64, 96)
    colour, gray = colorizer.colorize_many([image, gray_image(image)])
    assert np.abs(colour.astype(int) - gray).max() <= 2  # the gray copy's L differs only by uint8 rounding


def test_colorize_files_keeps_names_and_skips_unreadable(trained: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(photo(33, 45)).save(src / "a.jpg")
    Image.fromarray(photo(20, 31, seed=1)).save(src / "sub" / "b.png")
    (src / "sub" / "broken.jpg").write_bytes(b"not an image")
    (src / "notes.txt").write_text("ignored")
    loose = tmp_path / "c.tif"
    Image.fromarray(photo(25, 25, seed=2)).save(loose)
    written, failed = colorize_files(trained["checkpoint"], [src, loose, tmp_path / "missing.png"], tmp_path / "out", compare=True)
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in written) == ["a.png", "c.png", "sub/b.png"]
    assert Image.open(out / "sub" / "b.png").size == (31, 20)
    assert Image.open(out / "sub" / "b_compare.png").size == (3 * 31, 20)
    assert sorted(Path(name).name for name, _ in failed) == ["broken.jpg", "missing.png"]


def test_cli_colorize_exit_status_and_summary(trained: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(photo(30, 40)).save(tmp_path / "ok.png")
    options = ["-o", str(tmp_path / "out"), "--tracking-uri", trained["uri"], "--device", "cpu"]
    args = ["colorize", trained["fold"], str(tmp_path / "ok.png"), *options]
    assert cli.main(args) == 0
    assert f"Wrote 1 colorized image(s) to {tmp_path / 'out'}" in capsys.readouterr().err
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert cli.main(["colorize", trained["fold"], str(tmp_path / "ok.png"), str(tmp_path / "bad.jpg"), *options]) == 1
    assert "bad.jpg" in capsys.readouterr().err
    assert cli.main([*args, "--temperature", "0.2"]) == 2  # an mse model has no temperature


def test_cell_run_logs_a_pyfunc_model(trained: dict[str, str]) -> None:
    batch = np.stack([photo(45, 61, seed=s) for s in range(3)])
    out = mlflow.pyfunc.load_model(f"runs:/{trained['cell']}/model").predict(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    expected = colorbench.load(trained["cell"], device="cpu").colorize_many(list(batch))
    np.testing.assert_array_equal(out, np.stack(expected))


def test_served_model_answers_an_http_request_on_localhost(trained: dict[str, str]) -> None:
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{trained['cell']}/model"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained["uri"]}
    server = subprocess.Popen(command, env=env, cwd=trained["folder"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", server, 120, "mlflow models serve")
        images = np.stack([photo(21, 27, seed) for seed in range(2)])
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            predictions = np.asarray(json.loads(reply.read())["predictions"])
        assert predictions.shape == images.shape
        expected = mlflow.pyfunc.load_model(f"runs:/{trained['cell']}/model").predict(images)
        assert np.abs(predictions.astype(int) - expected.astype(int)).max() <= 1
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_registered_model_uri_loads_the_cell_model(trained: dict[str, str]) -> None:
    version = mlflow.register_model(f"runs:/{trained['cell']}/model", "tiny-colorizer").version
    image = photo(30, 44)
    by_name = colorbench.load(f"models:/tiny-colorizer/{version}", device="cpu").colorize(image)
    assert np.array_equal(by_name, colorbench.load(trained["cell"], device="cpu").colorize(image))
    with pytest.raises(ConfigError, match="cannot find registered model"):
        colorbench.load("models:/no-such-model/1")


def test_photo_formats_keep_their_size_and_orientation(trained: dict[str, str], tmp_path: Path) -> None:
    rgb = photo(37, 53)
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(tmp_path / "alpha.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise when displayed
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    written, failed = colorize_files(trained["cell"], [tmp_path], tmp_path / "out")
    assert failed == [] and len(written) == 4
    sizes = {p.stem: Image.open(p).size for p in (tmp_path / "out").glob("*.png")}
    assert sizes == {"gray": (53, 37), "alpha": (53, 37), "deep16": (53, 37), "rotated": (37, 53)}
