"""Verdicts for the committed results, recomputed from their table.csv (their MLflow stores are not kept): writes verdicts.md into
each results folder. Run from the repository root:

    python experiments/reverdict.py

A table.csv keeps each cell's per-split values (`split<i>_test_<m>`, training repeats already averaged within each split), which
is all a test across splits needs. Each folder is compared the way `colorbench report` compares (colorbench.report.comparisons):
corrected resampled t-test over the paired splits, Bayesian correlated t-test with the metric's ROPE, minimum detectable
difference, exact P(better) over splits, one verdict each, Holm over every split-level test of the file. Two sets of
comparisons, both fixed before the data: against the experiment file's first cell, and, for each splitter with several splits,
against that splitter's first cell in file order. n_val / n_train comes from the splitter on the pool's photos (`--pool-photos`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from colorbench.config import Cell, expand
from colorbench.metrics import rope, unit
from colorbench.report.comparisons import VERDICT, Sample, compare, computed_columns, settle, undecided_words
from colorbench.report.text import fmt_ci, fmt_p, markdown_rows
from colorbench.resolve import cell_labels, load_experiment
from colorbench.splitters import SPLITTERS

VALIDATION = ("experiments/validation.yaml", "data.image_size={0}", "test_data.image_size={0}")
STUDIES = {  # results folder -> the experiment file and the overrides it was run with (results/README.md)
    "bsds-losses": ("experiments/losses.yaml",),
    "bsds-depth-loss-validation": ("experiments/study.yaml",),
    "bsds-validation-schemes": ("experiments/validation.yaml",),
    "bsds-validation-repeats": ("experiments/validation-repeats.yaml",),
    "bsds-validation-48": (*(o.format(48) for o in VALIDATION), "experiment=bsds-validation-48", "train.repeats=2"),
    "bsds-validation-64": (*(o.format(64) for o in VALIDATION), "experiment=bsds-validation-64", "train.epochs=6", "train.repeats=3"),
}


def val_over_train(cell: Cell, photos: int) -> float:
    """Mean n_val / n_train of a cell's splits of a pool of `photos` photos (its splitter run on stand-in photos)."""
    pool = SimpleNamespace(images=np.zeros(photos), groups=np.arange(photos))
    folds = SPLITTERS.build(cell.splitter.name, cell.splitter.options).split(pool, cell.seed)
    return float(np.mean([len(f.val) / len(f.train) for f in folds]))


def sample(row: pd.Series, metric: str, cell: Cell, photos: int) -> Sample:
    """A committed row as the comparisons see it: its per-split values (one child per split, repeats averaged already), no images."""
    columns = {int(m.group(1)): c for c in row.index if (m := re.fullmatch(rf"split(\d+)_test_{metric}", c)) and pd.notna(row[c])}
    children = pd.Series([float(row[columns[i]]) for i in sorted(columns)], index=pd.MultiIndex.from_tuples([(i, 0) for i in sorted(columns)]))
    return Sample(children, val_over_train(cell, photos), (cell.seed, cell.data.model_dump_json(), row["splitter"]), None)


def label_key(backbone: str, loss: str, splitter: str) -> tuple[str, str, str]:
    """Component labels with the splitter's options sorted (older reports wrote them in another order)."""
    name, _, options = splitter.partition("(")
    return backbone, loss, name + "(" + ",".join(sorted(options.rstrip(")").split(","))) + ")" if options else name


def rows_in_file_order(table: pd.DataFrame, cells: list[Cell]) -> list[tuple[str, Cell]]:
    """Each of the file's cells (in file order) with its committed row's cell id: by id, else by its labels (cell ids of some
    committed runs were hashed from configs that have gained options since)."""
    by_labels = {label_key(*row[["backbone", "loss", "splitter"]]): cid for cid, row in table.iterrows()}
    found = [(c.id if c.id in table.index else by_labels.get(label_key(*cell_labels(c))), c) for c in cells]
    missing = [" | ".join(cell_labels(c)) for cid, c in found if cid is None]
    if missing:
        raise SystemExit(f"table.csv has no row for {missing}: the overrides in STUDIES are not the run's")
    return found


def comparisons(folder: Path, metric: str, photos: int, correction: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every comparison of a results folder (against the file's first cell; within each multi-split splitter, against its first cell),
    settled as one report; and each cell's labels."""
    file, *overrides = STUDIES[folder.name]
    table = pd.read_csv(folder / "table.csv").set_index("cell")
    found = rows_in_file_order(table, expand(load_experiment(file, overrides)))
    samples = {cid: sample(table.loc[cid], metric, c, photos) for cid, c in found}
    order = [cid for cid, _ in found]
    splitter = table.loc[order, "splitter"]
    bases = [("the file's first cell", order[0])]
    for name in dict.fromkeys(splitter):
        first = next(cid for cid in order if splitter[cid] == name)
        if len(samples[first].children) > 1 and first != order[0]:
            bases.append((f"the first {name} cell", first))
    rows = [
        {"against": against, "versus": base, "cell": cid, **compare(samples[cid], samples[base], metric, rope(metric))}
        for against, base in bases
        for cid in order
        if cid != base and (base == order[0] or splitter[cid] == splitter[base])
    ]
    settled = settle(pd.DataFrame(rows, columns=["against", "versus", "cell", *computed_columns()]), None, correction, metric)
    return settled, {cid: ", ".join(cell_labels(c)) for cid, c in found}


def markdown(folder: Path, metric: str, photos: int, correction: str) -> str:
    """verdicts.md of one results folder."""
    settled, names = comparisons(folder, metric, photos, correction)
    u = unit(metric)
    file, *overrides = STUDIES[folder.name]
    lines = [
        f"# {folder.name}: verdicts on test {metric}, recomputed from table.csv\n",
        f"`python experiments/reverdict.py` from `{folder}/table.csv` and `{file}`" + (f" with `{' '.join(overrides)}`" if overrides else "") + ". "
        f"Each verdict rests on the splits both cells were trained on (training repeats averaged within each split first): corrected "
        f"resampled t-test over the J paired splits (n_val / n_train from the splitter on {photos} pool photos), Holm over the "
        f"{int(settled['p_ttest_corrected'].notna().sum())} split-level tests of this file; Bayesian correlated t-test with the ROPE "
        f"±{rope(metric):g} {u} (`equivalent`: P(equivalent) >= 0.95); MDD: the smallest difference the test detects with 80 % power "
        "at alpha 0.05. A comparison with one split (a hold-out cell), or with none shared, gets no test across splits: `undecided`. "
        "The baselines are fixed before the data: the experiment file's first cell, and the first cell of each splitter with "
        "several splits. Caveat: these runs trained every split of a cell with the same training seeds (before per-split seeds), "
        "so a cell's initialisation is constant across its splits and the tests cannot see it: a better or worse here may be "
        "that initialisation's luck.\n",
    ]
    for against, group in settled.groupby("against", sort=False):
        base = group["versus"].iloc[0]
        header = ["cell", "configuration", "verdict", "J splits", f"Δ splits ({u})", "p", "p_adj", "P(worse / equiv. / better)", f"MDD ({u})", "P(better) splits"]
        rows = []
        for _, row in group.iterrows():
            words = row[VERDICT] if row[VERDICT] != "undecided" else f"undecided: {undecided_words(row, metric)}"
            probs = " / ".join(f"{row[f'prob_{k}']:.2f}" for k in ("worse", "equivalent", "better")) if pd.notna(row["prob_worse"]) else "-"
            diff = f"{row['diff_splits']:+.3f}" if pd.notna(row["diff_splits"]) else "-"
            rows.append([
                f"`{row['cell']}`", names[row["cell"]], words, str(int(row["n_splits"])), diff, fmt_p(row["p_ttest_corrected"]),
                fmt_p(row["p_adj_ttest_corrected"]), probs, f"{row['mdd']:.3f}", fmt_ci(row, "p_better_splits", "p_better_splits_ci"),
            ])  # fmt: skip
        lines += [f"## Against {against}: `{base}` {names[base]}\n", *markdown_rows(header, rows), ""]
    counts = settled[VERDICT].value_counts()
    lines.append("Verdicts in this file: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=[f"results/{name}" for name in STUDIES], help="results folders (default: all six)")
    parser.add_argument("--metric", default="psnr")
    parser.add_argument("--pool-photos", type=int, default=200, help="photos in the training pool (BSDS500's train split: 200)")
    parser.add_argument("--correction", choices=("holm", "bh", "none"), default="holm")
    args = parser.parse_args()
    for folder in map(Path, args.folders):
        (folder / "verdicts.md").write_text(markdown(folder, args.metric, args.pool_photos, args.correction))
        print(f"wrote {folder / 'verdicts.md'}")


if __name__ == "__main__":
    main()
