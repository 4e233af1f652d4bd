"""Multi-objective searches: the Pareto front of a study, its MLflow tags, and `pareto.csv` / `pareto.png` for the report."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from colorbench import tracking
from colorbench.search.storage import USER_ATTR_RUN, objective_names


def front_table(study: optuna.Study) -> pd.DataFrame:
    """Every complete trial: number, MLflow run id, one column per objective, and `pareto` (on Optuna's front, `study.best_trials`)."""
    names = objective_names(study)
    front = {t.number for t in study.best_trials}
    rows = [
        {"trial": t.number, "run_id": t.user_attrs.get(USER_ATTR_RUN), **dict(zip(names, t.values, strict=True)), "pareto": t.number in front}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ]
    return pd.DataFrame(rows, columns=["trial", "run_id", *names, "pareto"])


def tag_front(table: pd.DataFrame) -> None:
    """Tag each trial's MLflow run `colorbench.pareto=true|false` (the front moves as the study grows, so every run is retagged)."""
    for row in table.itertuples():
        if isinstance(row.run_id, str):
            tracking.set_tag(row.run_id, tracking.TAG_PARETO, str(bool(row.pareto)).lower())


def write_pareto(study: optuna.Study, out: Path, gray: dict[str, float]) -> list[str]:
    """`pareto.csv` (every complete trial, the front flagged) and `pareto.png` (the first two objectives: every trial, the front
    highlighted and joined, the gray baseline marked where `gray` has both metrics); the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = front_table(study)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "pareto.csv", index=False)
    x, y = objective_names(study)[:2]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    rest, front = table[~table["pareto"]], table[table["pareto"]].sort_values(x)
    ax.scatter(rest[x], rest[y], color="tab:blue", alpha=0.6, label="trial")
    ax.plot(front[x], front[y], color="tab:red", marker="o", linestyle="-", drawstyle="default", label="Pareto front")
    for row in table.itertuples():
        ax.annotate(str(row.trial), (getattr(row, x), getattr(row, y)), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if x in gray and y in gray:
        ax.scatter([gray[x]], [gray[y]], color="gray", marker="X", s=90, label="gray baseline (ab = 0, test set)")
    directions = [d.name.lower() for d in study.directions]
    ax.set_xlabel(f"{x} ({directions[0]})")
    ax.set_ylabel(f"{y} ({directions[1]})")
    ax.set_title(f"study {study.study_name}: {len(table)} trials, {len(front)} on the front")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)
    return ["pareto.csv", "pareto.png"]
