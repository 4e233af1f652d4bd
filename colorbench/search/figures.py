"""Optuna's own figures of a study (history, importances, parallel coordinates, intermediate values), as PNGs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna

STUDY_FIGURES = {
    "optuna_history.png": "plot_optimization_history",
    "optuna_importances.png": "plot_param_importances",
    "optuna_parallel.png": "plot_parallel_coordinate",
    "optuna_intermediate.png": "plot_intermediate_values",
}


def save_study_figures(study: optuna.Study, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Optuna's own plots (history, importances, parallel coordinates, intermediate values) as PNGs; why any was skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for filename, function in STUDY_FIGURES.items():
            try:
                axes = getattr(plots, function)(study)
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
