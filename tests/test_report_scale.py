"""Figures that scale to a whole search: with more than 15 cells, cd.png, bar.png and folds.png draw the top 10 (or --top) and the
baseline and say so in their titles; no figure is taller than a screen; CD rank labels are plain numbers. A synthetic 100-cell table
and rank matrix go straight into the figure functions."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import rankdata

from colorbench.report.figures import plot_bar, plot_cd, plot_folds, shown_cells
from colorbench.stats import cd_diagram

SCREEN = 1200  # pixels: no figure taller than this


def synthetic(n_cells: int, n_images: int = 60, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """A report's table (rank order, 3 folds each) of `n_cells` trials, its rank matrix (badness per image) and the gray row."""
    rng = np.random.default_rng(seed)
    skill = np.sort(rng.normal(20, 1, n_cells))[::-1]  # psnr, best first
    folds = skill[:, None] + rng.normal(0, 0.2, (n_cells, 3))
    table = pd.DataFrame({
        "cell": [f"trial-{i}" for i in range(n_cells)], "sampled": [f"lr={0.001 * (i + 1):.3f} depth={i % 3 + 6}" for i in range(n_cells)],
        "backbone": "resnet18-6", "loss": "mse", "splitter": "kfold(k=3)", "rank": np.arange(1, n_cells + 1),
        "test_psnr_mean": folds.mean(1), "test_psnr_std": folds.std(1, ddof=1), **{f"split{f}_test_psnr": folds[:, f] for f in range(3)},
    })  # fmt: skip
    matrix = pd.DataFrame(-(skill[None, :] + rng.normal(0, 1.5, (n_images, n_cells))), columns=table["cell"])
    return table, matrix, pd.Series({"cell": "gray baseline", "test_psnr_mean": 15.0})


def height_and_title(path: Path) -> tuple[int, str]:
    with Image.open(path) as image:
        return image.height, image.text["Title"]


def test_which_cells_a_figure_draws() -> None:
    table, _, _ = synthetic(100)
    shown, note = shown_cells(table.head(15), "trial-0")
    assert len(shown) == 15 and note == ""  # up to 15 cells: every one, nothing said
    shown, note = shown_cells(table, "trial-50")
    assert shown["cell"].tolist() == [f"trial-{i}" for i in range(10)] + ["trial-50"]
    assert note == "top 10 of 100 cells and the baseline; every cell: table.md"
    shown, note = shown_cells(table, "trial-2", top=5)
    assert shown["cell"].tolist() == [f"trial-{i}" for i in range(5)] and note.startswith("top 5 of 100 cells;")
    shown, note = shown_cells(table.head(6), "trial-0", top=3)  # a --top given applies whenever there are more cells
    assert len(shown) == 3 and note.startswith("top 3 of 6 cells")


def test_a_hundred_cells_give_figures_no_taller_than_a_screen_that_say_what_they_show(tmp_path: Path) -> None:
    table, matrix, gray = synthetic(100)
    shown, note = shown_cells(table, "trial-50")
    plot_cd(matrix, shown, tmp_path / "cd.png", note)
    plot_bar(shown, gray, "psnr", tmp_path / "bar.png", note)
    plot_folds(shown, gray, "psnr", tmp_path / "folds.png", note)
    for name in ("cd.png", "bar.png", "folds.png"):
        height, title = height_and_title(tmp_path / name)
        assert height <= SCREEN, (name, height)
        assert "top 10 of 100 cells and the baseline" in title, (name, title)
    assert "mean rank among all 100 cells" in height_and_title(tmp_path / "cd.png")[1]


def test_cd_ranks_are_over_every_cell_and_labelled_as_plain_numbers() -> None:
    _, matrix, _ = synthetic(120)
    expected = pd.Series(rankdata(matrix.to_numpy(), axis=1).mean(axis=0), index=matrix.columns)  # independent of colorbench.stats
    for shown in (None, ["trial-0", "trial-3", "trial-119"]):
        fig, ax = plt.subplots()
        cd_diagram(matrix, ax, shown=shown)
        labels = [t.get_text() for t in ax.texts if "trial-" in t.get_text()]
        plt.close(fig)
        assert len(labels) == (120 if shown is None else 3)
        assert not any("e+" in text for text in labels), [t for t in labels if "e+" in t][:3]
        for text in labels:
            name, rank = re.search(r"(trial-\d+)", text).group(1), float(re.search(r"\((\d+\.\d)\)", text).group(1))
            assert abs(rank - expected[name]) <= 0.05 + 1e-9  # one decimal
