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
import torch
import yaml
from conftest import TINY_GRID
from PIL import Image
from servers import free_port, wait_until_answering
from skimage.color import rgb2lab

import colorbench
from colorbench import cli
from colorbench.checkpoints import read_checkpoint
from colorbench.colorize import colorize_files, gray_image
from colorbench.errors import ConfigError
from colorbench.resolve import parse_experiment
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
        experiment_names=["tiny"], filter_string="tags.`colorbench.role` = 'fold'", order_by=["metrics.best_val_loss ASC"]
    )
    by_best_val = colorbench.load(best["run_id"].iloc[0], device="cpu").colorize(image)
    np.testing.assert_array_equal(outputs[0], by_best_val)  # a cell run is its deployed child: the best by validation
    cell_id = mlflow.get_run(trained["cell"]).data.tags["colorbench.cell_id"]
    np.testing.assert_array_equal(colorbench.load(cell_id, device="cpu").colorize(image), outputs[0])  # a cell id is its cell run


def test_unknown_model_is_a_clear_config_error(trained: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="neither a checkpoint file, a cell id"):
        colorbench.load("no-such-model.pt")
    with pytest.raises(ConfigError, match="no finished run of cell 0{12} in tracking store"):
        colorbench.load("0" * 12)
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


def test_cell_run_logs_a_pyfunc_model(trained: dict[str, str], tmp_path: Path) -> None:
    batch = np.stack([photo(45, 61, seed=s) for s in range(3)])
    out = mlflow.pyfunc.load_model(f"runs:/{trained['cell']}/model", dst_path=str(tmp_path)).predict(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    expected = colorbench.load(trained["cell"], device="cpu").colorize_many(list(batch))
    np.testing.assert_array_equal(out, np.stack(expected))


def test_served_model_answers_an_http_request_on_localhost(trained: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{trained['cell']}/model"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained["uri"], "TMPDIR": str(tmp_path)}  # the server's copy of the model lands there
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
        expected = mlflow.pyfunc.load_model(f"runs:/{trained['cell']}/model", dst_path=str(tmp_path)).predict(images)
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


def test_cell_model_is_logged_as_code_not_as_a_pickle(trained: dict[str, str], tmp_path: Path) -> None:
    model_dir = Path(mlflow.artifacts.download_artifacts(f"runs:/{trained['cell']}/model", dst_path=str(tmp_path)))
    files = {p.name for p in model_dir.iterdir()}
    assert "pyfunc_model.py" in files and "python_model.pkl" not in files
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and flavor["config"] == {"plugins": []}


def test_checkpoints_carry_a_format_and_old_ones_without_it_still_load(trained: dict[str, str], tmp_path: Path) -> None:
    checkpoint = read_checkpoint(trained["checkpoint"])
    assert checkpoint["format"] == 1
    image = photo(24, 40)
    expected = colorbench.load(trained["checkpoint"], device="cpu").colorize(image)
    torch.save({k: v for k, v in checkpoint.items() if k != "format"}, tmp_path / "old.pt")  # as written before formats
    assert np.array_equal(colorbench.load(str(tmp_path / "old.pt"), device="cpu").colorize(image), expected)
    torch.save({**checkpoint, "format": 2}, tmp_path / "newer.pt")
    with pytest.raises(ConfigError, match="has format 2; this colorbench reads format 1"):
        read_checkpoint(tmp_path / "newer.pt")
    torch.save({"weights": checkpoint["state_dict"]}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="is not a colorbench checkpoint: it needs the keys state_dict, backbone"):
        read_checkpoint(tmp_path / "other.pt")


class Payload:
    """Unpickling this creates the file `marker` (it calls the built-in `open`): a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def test_colorize_refuses_a_checkpoint_holding_code_without_running_it(
    trained: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    evil = tmp_path / "checkpoint.pt"
    torch.save({**read_checkpoint(trained["checkpoint"]), "note": Payload(tmp_path / "pwned")}, evil)
    torch.load(evil, weights_only=False)  # the payload is live: plain unpickling runs it
    assert (tmp_path / "pwned").exists()
    (tmp_path / "pwned").unlink()
    Image.fromarray(photo(20, 30)).save(tmp_path / "in.png")
    assert cli.main(["colorize", str(evil), str(tmp_path / "in.png"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "refusing checkpoint" in err and "(io.open)" in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


PLUGIN = '''
from colorbench.losses import LOSSES, MSE


@LOSSES.register("plugin-mse")
class PluginMSE(MSE):
    """MSE under a name only this plugin module registers."""
'''
LOG_WITH_PLUGIN = """
import sys
import mlflow
from colorbench.backbones import build_model
from colorbench.checkpoints import save_checkpoint
from colorbench.checkpoints import log_pyfunc
from colorbench.config import expand
from colorbench.plugins import load_plugins
from colorbench.resolve import parse_experiment

uri, folder = sys.argv[1:]
load_plugins(["colorbench_test_plugin"])
grid = {"experiment": "plugin-model", "data": {"source": "builtin", "image_size": 32}, "grid": {"loss": ["plugin-mse"]}}
cell = expand(parse_experiment(grid))[0]
save_checkpoint(f"{folder}/checkpoint.pt", cell, 0, 32, build_model("resnet18-6", {}, 2).state_dict())
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("plugin-model")
with mlflow.start_run() as run:
    log_pyfunc(f"{folder}/checkpoint.pt")
print(run.info.run_id)
"""
PREDICT = """
import os
import sys
import mlflow
import numpy as np
import colorbench

uri, run_id, checkpoint, images, out = sys.argv[1:]
mlflow.set_tracking_uri(uri)
batch = np.load(images)
predicted = mlflow.pyfunc.load_model(f"runs:/{run_id}/model", dst_path=os.path.dirname(out)).predict(batch)
expected = np.stack(colorbench.load(checkpoint, device="cpu").colorize_many(list(batch)))
np.savez(out, predicted=predicted, expected=expected)
"""


def test_pyfunc_model_of_a_plugin_loss_predicts_in_a_fresh_process(tracking_uri: str, tmp_path: Path) -> None:
    """Logged in one process with a plugin loaded, predicted in another that never imported the plugin itself."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "colorbench_test_plugin.py").write_text(PLUGIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # the store is passed in; no experiment of earlier tests
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])
    logged = subprocess.run([sys.executable, "-c", LOG_WITH_PLUGIN, tracking_uri, str(tmp_path)], env=env, capture_output=True, text=True, check=False)
    assert logged.returncode == 0, logged.stderr
    run_id = logged.stdout.split()[-1]
    np.save(tmp_path / "images.npy", np.stack([photo(23, 31, seed) for seed in range(2)]))
    args = [sys.executable, "-c", PREDICT, tracking_uri, run_id, str(tmp_path / "checkpoint.pt"), str(tmp_path / "images.npy"), str(tmp_path / "out.npz")]
    predicted = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert predicted.returncode == 0, predicted.stderr
    with np.load(tmp_path / "out.npz") as out:
        assert out["predicted"].shape == (2, 23, 31, 3) and out["predicted"].dtype == np.uint8
        np.testing.assert_array_equal(out["predicted"], out["expected"])
