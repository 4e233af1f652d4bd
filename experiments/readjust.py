"""Re-test a report's table.csv written before issue 17 (plain fold t-test, no adjustment) without its MLflow store.

From the table's per-fold values it computes the corrected resampled t-test against the baseline for cells on the same k-fold
splits, then adjusts those and the table's Wilcoxon p-values as one family (colorbench.stats). Run from the repository root:

    python experiments/readjust.py results/bsds-depth-loss-validation/table.csv --baseline 330125b40350 --val-share 0.25
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from colorbench.stats import CORRECTIONS, adjust, corrected_ttest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table")
    parser.add_argument("--baseline", required=True, help="the baseline cell id")
    parser.add_argument("--val-share", type=float, required=True, help="n_val / n_train of a fold (k-fold: 1 / (k - 1))")
    parser.add_argument("--metric", default="psnr")
    parser.add_argument("--correction", choices=list(CORRECTIONS), default="holm")
    args = parser.parse_args()
    table = pd.read_csv(args.table)
    table = table[table["cell"] != "gray baseline"].set_index("cell").copy()  # one block: no fragmentation warnings
    folds = [c for c in table.columns if c.startswith("split") and c.endswith(f"_test_{args.metric}")]
    base = table.loc[args.baseline, folds].to_numpy(float)
    corrected = []
    for cid, row in table.iterrows():
        values = row[folds].to_numpy(float)
        paired = cid != args.baseline and row["splitter"] == table.loc[args.baseline, "splitter"] and not np.isnan(values).any()
        corrected.append(corrected_ttest(values - base, args.val_share)[1] if paired else np.nan)
    table["p_ttest_corrected"] = corrected
    adjusted = adjust(np.concatenate([table["p_ttest_corrected"], table["p_wilcoxon_images"]]), args.correction)
    table["p_adj_ttest_corrected"], table["p_adj_wilcoxon_images"] = adjusted[: len(table)], adjusted[len(table) :]
    columns = ["backbone", "loss", "splitter", f"test_{args.metric}_mean", "p_ttest_folds", "p_ttest_corrected", "p_adj_ttest_corrected"]
    print(table[columns + ["p_wilcoxon_images", "p_adj_wilcoxon_images"]].to_string(float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
