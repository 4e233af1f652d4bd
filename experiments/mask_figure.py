"""Figure: per test image, the gray input, each mask's background score, each cell's prediction and the truth.

    python experiments/mask_figure.py --experiment NAME [--tracking-uri URI] --out results/masks/masks.png

Reads the experiment's FINISHED fold runs, takes the first fold of each cell and its logged `test_samples.npz`
(every cell shares the test set); the masks use their default options, `chroma` from the truth.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib
import mlflow
import numpy as np
import pandas as pd
import torch

from colorbench import tracking
from colorbench.components import MASKS
from colorbench.images import gray_rgb, lab_batch
from colorbench.plots import image_grid

MAX_ROWS = 4


def first_folds(experiment: str) -> pd.DataFrame:
    """The first FINISHED fold run of each cell, sorted by cell label."""
    query = f"tags.`{tracking.TAG_ROLE}` = 'fold' and attributes.status = 'FINISHED'"
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query, max_results=50000)
    if runs.empty:
        raise SystemExit(f"no finished fold runs in experiment {experiment!r}")
    runs = runs.sort_values(f"tags.{tracking.TAG_FOLD}").drop_duplicates(f"tags.{tracking.TAG_CELL}")
    runs["label"] = [cell_label(row) for _, row in runs.iterrows()]
    if runs["label"].duplicated().any():  # cells differing in something else: tell them apart by id
        runs["label"] += " " + runs[f"tags.{tracking.TAG_CELL}"].str[:6]
    return runs.sort_values("label")


def cell_label(row: pd.Series) -> str:
    """`loss.name`, plus the mask and background weight of a background-weighted loss."""
    label = str(row["params.loss.name"])
    mask = row.get("params.loss.mask")
    if isinstance(mask, str):
        label += f" {mask} bw={row.get('params.loss.background_weight')}"
    return label


def mask_images(truth: np.ndarray) -> dict[str, np.ndarray]:
    """Each registered mask's background score of uint8 (N,H,W,3) images, as magma-coloured float RGB (N,H,W,3)."""
    L, ab = lab_batch(torch.from_numpy(truth))
    colormap = matplotlib.colormaps["magma"]
    return {name: colormap(MASKS.build(name)(L, ab)[:, 0].numpy())[..., :3] for name in MASKS}


def draw(experiment: str, out: Path) -> Path:
    """Download each cell's test samples and save the figure to `out`."""
    runs = first_folds(experiment)
    samples = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _, row in runs.iterrows():
            path = mlflow.artifacts.download_artifacts(
                run_id=row["run_id"], artifact_path="test_samples.npz", dst_path=f"{tmp}/{row['run_id']}"
            )
            with np.load(path) as npz:
                samples[row["label"]] = {key: npz[key][:MAX_ROWS] for key in ("truth", "predicted", "names")}
    first = next(iter(samples.values()))
    truth, names = first["truth"], [str(n) for n in first["names"]]
    masks = mask_images(truth)
    columns = ["gray input", *(f"{name} (background)" for name in masks), *samples, "truth"]
    rows = [
        [gray, *(m[i] for m in masks.values()), *(s["predicted"][i] for s in samples.values()), truth[i]]
        for i, gray in enumerate(gray_rgb(truth))
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, columns, out, names)
    return out


def main(argv: list[str] | None = None) -> Path:
    """Parse arguments, draw the figure, print and return its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (the grid's `experiment`)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--out", type=Path, default=Path("results/masks/masks.png"), help="output image path")
    args = parser.parse_args(argv)
    mlflow.set_tracking_uri(tracking.resolve_tracking_uri(args.tracking_uri))
    out = draw(args.experiment, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
