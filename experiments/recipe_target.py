"""Issue 28's target, read from an MLflow store: which cells (or search trials) are both faithful and colourful on their test split,
a test PSNR above the gray image's (ab = 0) and a test colourfulness ratio of at least 0.6, and by how much the others miss.
Writes a markdown table to stdout. Run from the repository root, e.g.:

    python experiments/recipe_target.py --tracking-uri sqlite:///recipe.db recipe-search recipe-seed recipe-mse-calibrated \
        --figure results/recipe/target.png > results/recipe/target.md

The figures are each cell's mean over its fold models (`test_<metric>_mean`); the gray image is scored on the same test photos
(`gray_test_psnr`). Nothing here is chosen by a test metric: it only reads what the runs logged.
"""

from __future__ import annotations

import argparse

import pandas as pd

from colorbench import tracking
from colorbench.report.runs import ROW, components, load_runs
from colorbench.report.text import fmt_value, markdown_rows

MIN_RATIO = 0.6  # the colourfulness ratio issue 28 asks for


def target_rows(experiments: list[str]) -> pd.DataFrame:
    """One row per finished cell or trial: its test PSNR, the gray image's, the gap, its colourfulness ratio, and whether it meets both."""
    rows = []
    for name in experiments:
        for _, cell in load_runs(name).cells.iterrows():
            psnr, gray = cell["metrics.test_psnr_mean"], cell["metrics.gray_test_psnr"]
            ratio = cell["metrics.test_colorfulness_ratio_mean"]
            spread = {m: cell.get(f"metrics.test_{m}_std", float("nan")) for m in ("psnr", "colorfulness_ratio")}
            rows.append({
                "experiment": name, "cell": cell[ROW], "loss": components(cell)[1], "folds": int(cell["metrics.n_folds"]),
                "test_psnr": psnr, "gray_psnr": gray, "psnr_minus_gray": psnr - gray, "colorfulness_ratio": ratio,
                "both": bool(psnr > gray and ratio >= MIN_RATIO), "psnr_std": spread["psnr"], "ratio_std": spread["colorfulness_ratio"],
            })  # fmt: skip
    return pd.DataFrame(rows)


def verdict_line(table: pd.DataFrame) -> str:
    """Whether any row meets both, else how far the closest misses: the PSNR short of gray among those colourful enough, and the
    ratio short of 0.6 among those above gray."""
    if table["both"].any():
        best = table[table["both"]].sort_values("psnr_minus_gray", ascending=False).iloc[0]
        return (f"{int(table['both'].sum())} of {len(table)} reach both. The highest PSNR among them: {best['experiment']} / {best['cell']} "
                f"({best['loss']}), {best['psnr_minus_gray']:+.2f} dB over gray at a colourfulness ratio of {best['colorfulness_ratio']:.2f}.")
    colourful = table[table["colorfulness_ratio"] >= MIN_RATIO]
    faithful = table[table["psnr_minus_gray"] > 0]
    gap_db = "none is colourful enough" if colourful.empty else f"{-colourful['psnr_minus_gray'].max():.2f} dB short of gray"
    gap_ratio = "none beats gray" if faithful.empty else f"{MIN_RATIO - faithful['colorfulness_ratio'].max():.2f} short of {MIN_RATIO}"
    return f"None of {len(table)} reaches both. Among the colourful enough, the best is {gap_db}; among those above gray, the most colourful is {gap_ratio}."


def draw(table: pd.DataFrame, path: str) -> None:
    """Each row at (test PSNR - gray, colourfulness ratio), the target region shaded; cells with several folds as mean +- SD over
    their fold models, search trials (one split each) as small dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.axhline(MIN_RATIO, color="0.5", lw=0.8, ls="--")
    ax.axvline(0, color="0.5", lw=0.8, ls="--")
    trials = table[table["folds"] == 1]
    ax.scatter(trials["psnr_minus_gray"], trials["colorfulness_ratio"], s=14, color="0.6", label="search trials (one split)")
    for _, row in table[table["folds"] > 1].iterrows():
        ax.errorbar(row["psnr_minus_gray"], row["colorfulness_ratio"], xerr=row["psnr_std"], yerr=row["ratio_std"], fmt="o", capsize=3,
                    label=f"{row['experiment']}: {row['loss']} ({row['folds']} fold models)")  # fmt: skip
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    ax.fill_between([0, max(x1, 0.5)], MIN_RATIO, max(y1, MIN_RATIO + 0.1), color="0.9", zorder=0)
    ax.set_xlim(x0, max(x1, 0.5)), ax.set_ylim(y0, max(y1, MIN_RATIO + 0.1))
    ax.set_xlabel("test PSNR minus the gray image's (dB)")
    ax.set_ylabel("test colourfulness ratio (prediction / truth)")
    ax.set_title(f"Faithful (right of 0) and colourful (above {MIN_RATIO}): the shaded corner")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--figure", default=None, help="also draw the rows to this PNG")
    args = parser.parse_args()
    tracking.open_store(args.tracking_uri)
    table = target_rows(args.experiments).sort_values(["experiment", "psnr_minus_gray"], ascending=[True, False])
    print(f"# Faithful and colourful: test PSNR above gray and colourfulness ratio >= {MIN_RATIO}\n")
    print(verdict_line(table) + "\n")
    shown = table.drop(columns=["psnr_std", "ratio_std"])
    print("\n".join(markdown_rows(list(shown.columns), ([fmt_value(v) for v in row] for row in shown.itertuples(index=False)))))
    if args.figure:
        draw(table, args.figure)


if __name__ == "__main__":
    main()
