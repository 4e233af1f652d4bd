"""Optuna samplers and pruners by name, so search files pick them like any other component (`colorbench list` shows them)."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import optuna

from colorbench.errors import ConfigError
from colorbench.registry import Registry

if TYPE_CHECKING:
    from colorbench.search.space import Param

SamplerFactory = Callable[[int, Sequence["Param"]], optuna.samplers.BaseSampler]  # (seed, space) -> sampler

SAMPLERS: Registry[SamplerFactory] = Registry("sampler")
PRUNERS: Registry[optuna.pruners.BasePruner] = Registry("pruner")


@SAMPLERS.register("tpe")
def tpe(n_startup_trials: int = 5) -> SamplerFactory:
    """Tree-structured Parzen estimator, multivariate and grouped so conditional entries are modelled together."""

    def build(seed: int, space: Sequence[Param]) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(n_startup_trials=n_startup_trials, multivariate=True, group=True, seed=seed)

    return build


@SAMPLERS.register("nsga2")
def nsga2(population_size: int = 8) -> SamplerFactory:
    """NSGA-II, the genetic algorithm for several objectives (a Pareto front); random until the first generation is complete."""
    if population_size < 2:
        raise ConfigError(f"sampler nsga2 needs population_size >= 2, got {population_size}")
    return lambda seed, space: optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)


@SAMPLERS.register("random")
def random() -> SamplerFactory:
    """Independent uniform sampling: the baseline every smarter sampler should beat."""
    return lambda seed, space: optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("grid")
def grid() -> SamplerFactory:
    """Every combination of the `choice` entries (no ranges, no `when`), in a seeded shuffled order."""

    def build(seed: int, space: Sequence[Param]) -> optuna.samplers.BaseSampler:
        bad = [p.key for p in space if p.kind != "choice" or p.when]
        if bad:
            raise ConfigError(f"sampler grid needs every space entry to be a choice without when; change {bad[0]} or use sampler: tpe")
        return optuna.samplers.GridSampler({p.key: list(p.values) for p in space}, seed=seed)

    return build


@SAMPLERS.register("cmaes")
def cmaes(n_startup_trials: int = 1) -> SamplerFactory:
    """CMA-ES for numeric ranges (choices fall back to independent sampling); needs `pip install cmaes`."""

    def build(seed: int, space: Sequence[Param]) -> optuna.samplers.BaseSampler:
        if importlib.util.find_spec("cmaes") is None:
            raise ConfigError("sampler cmaes needs the cmaes package: pip install cmaes (or use sampler: tpe)")
        if all(p.kind == "choice" for p in space):
            raise ConfigError("sampler cmaes searches numeric ranges and this space has only choices; use sampler: tpe or grid")
        return optuna.samplers.CmaEsSampler(n_startup_trials=n_startup_trials, seed=seed, warn_independent_sampling=False)

    return build


@PRUNERS.register("median")
def median(n_startup_trials: int = 2, n_warmup_steps: int = 1) -> optuna.pruners.BasePruner:
    """Stop a trial whose running value is worse than the median of earlier trials at the same step."""
    return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)


@PRUNERS.register("hyperband")
def hyperband(min_resource: int = 1, reduction_factor: int = 3) -> optuna.pruners.BasePruner:
    """Successive halving over several brackets; a step is one epoch of one fold."""
    return optuna.pruners.HyperbandPruner(min_resource=min_resource, reduction_factor=reduction_factor)


@PRUNERS.register("none")
def none() -> optuna.pruners.BasePruner:
    """Never prune: every trial trains all its epochs."""
    return optuna.pruners.NopPruner()
