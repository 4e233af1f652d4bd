"""Grid and search files resolved against the registries: names and options checked, defaults filled in, labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from colorbench.backbones import BACKBONES
from colorbench.config import Cell, Component, DataConfig, Experiment, GridAxes, SetupT, apply_override, read_yaml, validate_mapping
from colorbench.data import SOURCES
from colorbench.errors import ConfigError
from colorbench.losses import LOSSES
from colorbench.metrics import METRICS
from colorbench.registry import Registry
from colorbench.splitters import SPLITTERS


def fill(registry: Registry, comp: Component, where: str) -> Component:
    """`comp` with its registry defaults filled in; unknown names/options raise a ConfigError prefixed by `where`."""
    try:
        return Component(name=comp.name, options=registry.validate(comp.name, comp.options))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def resolve_data(setup: SetupT, where: str) -> SetupT:
    """`setup` with its data and test_data sources' options validated and defaults filled in (and `train.decode`'s metric checked)."""
    rule = setup.train.decode
    choosable = [m.name for m in METRICS.values() if m.computed]  # the loss is not a measure of the decoding
    if rule is not None and rule.choose.removeprefix("val_") not in choosable:
        known = ", ".join(f"val_{m}" for m in choosable)
        raise ConfigError(f"{where}: train.decode.choose: {rule.choose!r} is not a validation metric of the metric table; choose one of {known}")

    def fill_data(data: DataConfig, section: str) -> DataConfig:
        filled = fill(SOURCES, Component(name=data.source, options=data.options), f"{where}: {section}")
        return data.model_copy(update={"source": filled.name, "options": filled.options})

    test_data = fill_data(setup.test_data, "test_data") if setup.test_data else None
    return setup.model_copy(update={"data": fill_data(setup.data, "data"), "test_data": test_data})


def resolve(exp: Experiment, where: str = "grid") -> Experiment:
    """Fill in registry defaults and reject unknown names/options, prefixed by `where`."""
    grid = GridAxes(
        backbone=[fill(BACKBONES, c, f"{where}: grid.backbone") for c in exp.grid.backbone],
        loss=[fill(LOSSES, c, f"{where}: grid.loss") for c in exp.grid.loss],
        splitter=[fill(SPLITTERS, c, f"{where}: grid.splitter") for c in exp.grid.splitter],
    )
    return resolve_data(exp, where).model_copy(update={"grid": grid})


def parse_experiment(raw: Any, where: str = "grid") -> Experiment:
    """Validate a loaded mapping into an Experiment and resolve every component's options."""
    return resolve(validate_mapping(Experiment, raw, where), where)


ParsedT = TypeVar("ParsedT")


def load_with_overrides(
    path: str | Path, overrides: Sequence[str], model: type[BaseModel], parse: Callable[[Any, str], ParsedT]
) -> ParsedT:
    """Read the file at `path` and parse it, then each `key=value` override in turn, each checked like the file and named in its
    errors; the result is what the same edits in the file would give."""
    raw = read_yaml(path)
    parsed = parse(raw, str(path))
    for text in overrides:
        raw = apply_override(raw, text, model)
        parsed = parse(raw, f"override {text!r}")
    return parsed


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Read, validate and resolve a grid file with command-line `overrides`; every problem is a one-line ConfigError."""
    return load_with_overrides(path, overrides, Experiment, parse_experiment)


def cell_labels(cell: Cell) -> tuple[str, str, str]:
    """(backbone, loss, splitter) of a cell as `name(non-default options)`; the splitter shows all its options."""
    return (
        BACKBONES.label(cell.backbone.name, cell.backbone.options),
        LOSSES.label(cell.loss.name, cell.loss.options),
        SPLITTERS.label(cell.splitter.name, cell.splitter.options, every=True),
    )
