"""Search files: the grid file's shared sections, one backbone/loss/splitter to start from, and an Optuna `space`.

A space entry is `KEY: {DISTRIBUTION: VALUES, when: {OTHER_KEY: VALUE or [VALUES]}}` where KEY is `backbone`, `loss`,
`backbone.<option>`, `loss.<option>` or `train.<field>`, and DISTRIBUTION is one of `choice: [...]`,
`uniform: [low, high]`, `loguniform: [low, high]`, `int: [low, high]`, `logint: [low, high]` (with an optional `step`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import optuna
import pydantic
from pydantic import BaseModel, Field

from colorbench.config import STRICT, Cell, Component, Setup, TrainConfig, format_error, validate_mapping
from colorbench.errors import ConfigError
from colorbench.metrics import BETTER_WORDS, METRICS
from colorbench.registry import Registry
from colorbench.resolve import fill, load_with_overrides, resolve_data

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "logint")
COMPONENT_AXES = ("backbone", "loss")
TUNABLE_TRAIN = ("lr", "weight_decay", "batch_size", "epochs", "patience")
DIRECTIONS = {"higher": "maximize", "lower": "minimize"}  # a closest-to-1 metric takes either, stated in the file


def objective_choices() -> list[str]:
    """The metrics a search may optimise: every metric of the table, on the validation set."""
    return [f"val_{name}" for name in METRICS]


class ObjectiveConfig(BaseModel):
    """What a trial returns: a validation metric at each fold's best checkpoint (lowest val loss), averaged over folds.

    `direction` defaults to the metric's better direction (`metrics.METRICS`), and may not contradict it.
    """

    model_config = STRICT
    metric: str = "val_loss"
    direction: Literal["minimize", "maximize"] | None = None

    @pydantic.field_validator("metric")
    @classmethod
    def _validation_only(cls, metric: str) -> str:
        if metric.startswith("test_"):
            raise ValueError(f"{metric} is a test metric; a search may only optimise validation metrics (val_...), so the test set stays unseen")
        known = objective_choices()
        if metric not in known:
            close = difflib.get_close_matches(metric, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown objective metric {metric!r}.{hint} Known: {', '.join(known)}")
        return metric

    @pydantic.model_validator(mode="after")
    def _direction_of_the_metric(self) -> ObjectiveConfig:
        better = METRICS[self.metric.removeprefix("val_")].better
        wanted = DIRECTIONS.get(better)
        if wanted is None and self.direction is None:
            raise ValueError(f"{self.metric} is best at 1; state direction: maximize or minimize")
        if wanted is not None and self.direction not in (None, wanted):
            raise ValueError(f"{self.metric}: {BETTER_WORDS[better]}, so direction must be {wanted}, not {self.direction}")
        self.direction = self.direction or wanted
        return self


class SearchConfig(Setup):
    """A whole search file."""

    backbone: Component = Component(name="resnet18-6")
    loss: Component = Component(name="mse")
    splitter: Component = Component(name="holdout")
    space: dict[str, dict[str, Any]] = Field(min_length=1)
    objective: ObjectiveConfig = ObjectiveConfig()
    objectives: list[ObjectiveConfig] | None = Field(None, min_length=2)  # several at once: a Pareto front instead of one best
    sampler: Component = Component(name="tpe")
    pruner: Component = Component(name="median")
    n_trials: int = Field(20, gt=0)
    timeout: float | None = Field(None, gt=0)

    @pydantic.model_validator(mode="after")
    def _one_or_several_objectives(self) -> SearchConfig:
        if self.objectives is None:
            return self
        if "objective" in self.model_fields_set:
            raise ValueError("give either objective or objectives, not both")
        metrics = [g.metric for g in self.objectives]
        if len(set(metrics)) < len(metrics):
            raise ValueError(f"objectives: each metric once, got {metrics}")
        if "pruner" in self.model_fields_set and self.pruner.name != "none":
            raise ValueError(f"pruner {self.pruner.name}: Optuna does not prune multi-objective studies; remove the pruner or write pruner: none")
        self.pruner = Component(name="none")
        return self

    @property
    def goals(self) -> list[ObjectiveConfig]:
        """The objectives a trial returns, in order: `objectives`, else the one `objective`."""
        return self.objectives or [self.objective]


@dataclass(frozen=True)
class Param:
    """One space entry: how to sample `key`, and under which earlier choices it applies."""

    key: str
    kind: str
    values: tuple[Any, ...]  # the choices, or (low, high)
    step: float | None = None
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def applies(self, chosen: dict[str, Any]) -> bool:
        """True when every `when` condition holds for the values chosen so far."""
        return all(chosen.get(key) in allowed for key, allowed in self.when.items())

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample this entry in `trial` (named by its key, so Optuna's figures show `loss.temperature`)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.key, low, high, step=int(self.step or 1), log=self.kind == "logint")
        return trial.suggest_float(self.key, low, high, step=self.step, log=self.kind == "loguniform")


@dataclass(frozen=True)
class Search:
    """A validated search file: its config, its parsed space in file order, and the command-line overrides it was read with
    (tagged on every run, `tracking.TAG_OVERRIDES`)."""

    config: SearchConfig
    params: tuple[Param, ...]
    overrides: tuple[str, ...] = ()

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every entry whose conditions hold (component names count as chosen even when fixed)."""
        chosen: dict[str, Any] = {axis: getattr(self.config, axis).name for axis in COMPONENT_AXES}
        values: dict[str, Any] = {}
        for param in self.params:
            if param.applies(chosen):
                values[param.key] = chosen[param.key] = param.suggest(trial)
        return values

    def cell(self, values: dict[str, Any]) -> Cell:
        """The resolved cell a trial trains: the file's components and train settings with the sampled values applied."""
        cfg = self.config
        axes = {axis: component_with(getattr(cfg, axis), axis, values) for axis in COMPONENT_AXES}
        train = cfg.train.model_copy(update={k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("train.")})
        return cfg.cell(axes["backbone"], axes["loss"], cfg.splitter, train)


def registry_of(axis: str) -> Registry:
    from colorbench.components import BACKBONES, LOSSES

    return {"backbone": BACKBONES, "loss": LOSSES}[axis]


def component_with(base: Component, axis: str, values: dict[str, Any]) -> Component:
    """`base`, or the sampled component for `axis` (its defaults), with sampled `axis.<option>` values applied."""
    name = values.get(axis, base.name)
    options = dict(base.options) if name == base.name else {}
    options.update({k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f"{axis}.")})
    return fill(registry_of(axis), Component(name=name, options=options), f"space: {axis}")


def parse_param(key: str, raw: dict[str, Any], where: str) -> Param:
    """One space entry from its YAML mapping; shape errors are one-line ConfigErrors."""
    kinds = [k for k in raw if k in DISTRIBUTIONS]
    extra = sorted(set(raw) - set(DISTRIBUTIONS) - {"when", "step"})
    if len(kinds) != 1 or extra:
        problem = f"unknown key {extra[0]!r}" if extra else "needs exactly one distribution"
        raise ConfigError(f"{where}: {problem}; write e.g. {{loguniform: [1.0e-4, 3.0e-3]}} (distributions: {', '.join(DISTRIBUTIONS)})")
    kind, values = kinds[0], raw[kinds[0]]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind} takes a non-empty list, e.g. {kind}: [{'a, b' if kind == 'choice' else 'low, high'}]")
    if kind == "choice":
        if any(not isinstance(v, (str, int, float, bool)) and v is not None for v in values):
            raise ConfigError(f"{where}: choice values must be plain names or numbers; set component options with their own `{key}.<option>` entries")
    else:
        numeric = int if kind in ("int", "logint") else (int, float)
        if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, numeric) for v in values) or values[0] >= values[1]:
            raise ConfigError(f"{where}: {kind} takes [low, high] with low < high{' (whole numbers)' if numeric is int else ''}; got {values}")
        if kind.startswith("log") and values[0] <= 0:
            raise ConfigError(f"{where}: {kind} needs low > 0; got {values}")
    step = raw.get("step")
    if step is not None and (kind in ("choice", "loguniform") or isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive number and applies to uniform and int only")
    when = raw.get("when", {})
    if not isinstance(when, dict) or ("when" in raw and not when):
        raise ConfigError(f"{where}: when takes a mapping of other entries to values, e.g. when: {{loss: ce-rebalanced}}")
    return Param(key, kind, tuple(values), step, {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()})


def check_target(param: Param, params: list[Param], cfg: SearchConfig, where: str) -> None:
    """The key must name a component, one of its options, or a train field, with values it accepts."""
    axis, _, option = param.key.partition(".")
    if axis == "train":
        if option not in TUNABLE_TRAIN:
            raise ConfigError(f"{where}: train.{option} cannot be searched; tunable: {', '.join('train.' + t for t in TUNABLE_TRAIN)}")
        for value in param.values:
            try:
                TrainConfig.model_validate({**cfg.train.model_dump(), option: value})
            except pydantic.ValidationError as err:
                raise ConfigError(format_error(where, err)) from None
        return
    if axis not in COMPONENT_AXES:
        allowed = "backbone, loss, backbone.<option>, loss.<option>, train.<field>"
        hint = "; the splitter is fixed so every trial is scored on the same folds" if axis == "splitter" else ""
        raise ConfigError(f"{where}: cannot search {param.key!r}{hint}; searchable keys: {allowed}")
    registry = registry_of(axis)
    if not option:
        if param.kind != "choice":
            raise ConfigError(f"{where}: {axis} takes choice: [names]")
        for name in param.values:
            fill(registry, Component(name=str(name)), where)
        return
    for name in candidate_names(axis, param, params, cfg):
        base = dict(getattr(cfg, axis).options) if name == getattr(cfg, axis).name else {}
        for value in param.values:
            fill(registry, Component(name=name, options={**base, option: value}), f"{where} (for {axis} {name})")


def candidate_names(axis: str, param: Param, params: list[Param], cfg: SearchConfig) -> list[str]:
    """The component names an option entry can meet: its `when` names, else every choice of the axis, else the fixed one."""
    if axis in param.when:
        return [str(n) for n in param.when[axis]]
    chooser = next((p for p in params if p.key == axis), None)
    return [str(n) for n in chooser.values] if chooser else [getattr(cfg, axis).name]


def check_conditions(param: Param, earlier: dict[str, Param], cfg: SearchConfig, where: str) -> None:
    """Conditions may only refer to earlier entries or to a fixed (unsearched) backbone/loss, with values those can take."""
    for key, allowed in param.when.items():
        if key in earlier:
            domain = earlier[key].values if earlier[key].kind == "choice" else None
        elif key in COMPONENT_AXES and key not in cfg.space:
            domain = (getattr(cfg, key).name,)
        else:
            raise ConfigError(f"{where}: when refers to {key!r}, which is not an earlier space entry (entries are sampled in file order)")
        if domain is not None and not set(allowed) & set(domain):
            raise ConfigError(f"{where}: when {key}: {list(allowed)} can never hold ({key} takes {list(domain)})")


def parse_search(raw: Any, where: str = "search") -> Search:
    """Validate a loaded search file: sections, components, every space entry and its conditions, sampler and pruner."""
    from colorbench.components import SPLITTERS
    from colorbench.search.engines import PRUNERS, SAMPLERS

    cfg = resolve_data(validate_mapping(SearchConfig, raw, where), where)
    cfg = cfg.model_copy(
        update={
            "backbone": fill(registry_of("backbone"), cfg.backbone, f"{where}: backbone"),
            "loss": fill(registry_of("loss"), cfg.loss, f"{where}: loss"),
            "splitter": fill(SPLITTERS, cfg.splitter, f"{where}: splitter"),
        }
    )
    params: list[Param] = []
    for key, entry in cfg.space.items():
        param = parse_param(key, entry, f"{where}: space.{key}")
        check_conditions(param, {p.key: p for p in params}, cfg, f"{where}: space.{key}")
        params.append(param)
    for param in params:
        check_target(param, params, cfg, f"{where}: space.{param.key}")
    search = Search(cfg, tuple(params))
    SAMPLERS.build(cfg.sampler.name, cfg.sampler.options)(0, search.params)  # fails now, not after data loading
    PRUNERS.build(cfg.pruner.name, cfg.pruner.options)
    return search


def load_search(path: str | Path, overrides: Sequence[str] = ()) -> Search:
    """Read and validate a search file with command-line `overrides`; every problem is a one-line ConfigError."""
    return replace(load_with_overrides(path, overrides, SearchConfig, parse_search), overrides=tuple(overrides))
