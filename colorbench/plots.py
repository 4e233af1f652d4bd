"""Figures logged with the runs: loss curves and gray | predicted | truth panels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def loss_curves(history: list[dict[str, float]], path: Path, best_epoch: int | None = None) -> None:
    """Training and validation loss per epoch on a log axis (the seed's plot)."""
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [r["train_loss"] for r in history], label="train", marker=".")
    ax.plot(epochs, [r["val_loss"] for r in history], label="validation", marker=".")
    if best_epoch:
        ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch {best_epoch}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (log scale)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def image_grid(rows: list[list[np.ndarray]], column_titles: list[str], path: Path, row_titles: list[str] | None = None) -> None:
    """Save a grid of RGB images (float [0,1] or uint8, HxWx3) with titled columns and optional row labels."""
    n_rows, n_cols = len(rows), len(column_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2 * n_cols, 2 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=9)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
