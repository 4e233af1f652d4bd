"""`colorbench search`: an Optuna study over the grid's components and options, every trial a cell run through the lifecycle.

`space` reads the search file (its parameters and objectives), `engines` registers the samplers and pruners, `storage` opens
Optuna storages, `optimize` runs the study (sampling each trial here and sending it to an executor), `trial` is one trial as an
executor's task (its folds, the pruner's reports), `pareto` marks a multi-objective study's front and `figures` draws Optuna's plots.
The modules are imported by name (this file imports nothing), so the report reads a study without the training stack.
"""
