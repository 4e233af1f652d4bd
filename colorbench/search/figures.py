"""Optuna's own figures of a study (history, importances, parallel coordinates, intermediate values), as PNGs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna

from colorbench.search.storage import objective_names

STUDY_FIGURES = {
    "optuna_history.png": "plot_optimization_history",
    "optuna_importances.png": "plot_param_importances",
    "optuna_parallel.png": "plot_parallel_coordinate",
    "optuna_intermediate.png": "plot_intermediate_values",
}


def figure_options(study: optuna.Study) -> dict[str, dict]:
    """The figures' arguments: with several objectives, the history follows the first (Optuna needs a `target`) and there are no
    intermediate values to plot (nothing is reported: multi-objective studies are not pruned)."""
    if len(study.directions) == 1:
        return {function: {} for function in STUDY_FIGURES.values()}
    first = {"target": lambda trial: trial.values[0], "target_name": objective_names(study)[0]}
    return {"plot_optimization_history": first, "plot_param_importances": {}, "plot_parallel_coordinate": first}


def save_study_figures(study: optuna.Study, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Optuna's own plots (history, importances, parallel coordinates, intermediate values) as PNGs; why any was skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    options = figure_options(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for filename, function in STUDY_FIGURES.items():
            if function not in options:
                continue
            try:
                axes = getattr(plots, function)(study, **options[function])
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                skipped[filename] = str(err).splitlines()[0] if str(err) else type(err).__name__
                continue
            figure = np.ravel(axes)[0].figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 9), max(figure.get_size_inches()[1], 5))
            figure.tight_layout()
            figure.savefig(out_dir / filename, dpi=110)
            plt.close(figure)
            written.append(out_dir / filename)
    return written, skipped
