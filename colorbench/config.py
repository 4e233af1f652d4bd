"""The schema of grid files: pydantic models, YAML reading, grid expansion into `Cell`s, flat params and stable ids.

Pure schema: nothing here knows the registries. Checking names and options against them, and filling in their defaults,
is `colorbench.resolve`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from colorbench.errors import ConfigError

STRICT = ConfigDict(extra="forbid")


class Component(BaseModel):
    """A registry entry and its options: YAML `name` or `{name: ..., option: value}`."""

    model_config = STRICT
    name: str
    options: dict[str, Any] = {}

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "options" not in value:
            if "name" not in value:
                raise ValueError("a component mapping needs a 'name' key, e.g. {name: kfold, k: 5}")
            rest = {k: v for k, v in value.items() if k != "name"}
            return {"name": value["name"], "options": rest}
        return value


class DataConfig(BaseModel):
    """`source` names a registered image source; every other key is an option of it."""

    model_config = STRICT
    source: str = "builtin"
    options: dict[str, Any] = {}

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"source": value}
        if isinstance(value, dict) and "options" not in value:
            return {"source": value.get("source", "builtin"), "options": {k: v for k, v in value.items() if k != "source"}}
        return value


class TrainConfig(BaseModel):
    """Optimisation settings shared by every cell."""

    model_config = STRICT
    epochs: int = Field(10, gt=0, strict=True)  # strict: `epochs: true` or `epochs: "5"` is an error, not 1 or 5
    batch_size: int = Field(32, gt=0, strict=True)
    lr: float = Field(3.0e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int | None = Field(None, gt=0, strict=True)
    seed: int = Field(0, strict=True)
    device: str = "auto"
    crop: float = Field(1.0, gt=0, le=1)  # random crop: smallest side as a fraction of the image's (1 = no cropping)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA GPUs that support it, else fp32
    channels_last: bool = True  # NHWC model on any device
    compile: bool = False  # torch.compile the training forward pass
    # save the fold's training state every this many epochs, to resume inside a fold; it cannot change results, so it is left
    # out of config dumps and cell ids
    checkpoint_every: int = Field(1, gt=0, strict=True, exclude=True)


class GridAxes(BaseModel):
    """The lists whose cartesian product is the grid."""

    model_config = STRICT
    backbone: list[Component] = Field(default_factory=lambda: [Component(name="resnet18-6")], min_length=1)
    loss: list[Component] = Field(default_factory=lambda: [Component(name="mse")], min_length=1)
    splitter: list[Component] = Field(default_factory=lambda: [Component(name="holdout")], min_length=1)


class Setup(BaseModel):
    """The sections a grid file and a search file share: experiment name, data, test set and training settings."""

    model_config = STRICT
    experiment: str = Field(min_length=1)
    data: DataConfig = DataConfig()
    test_data: DataConfig | None = None
    seed: int = 0
    test_fraction: float = Field(0.15, gt=0, lt=1)
    train: TrainConfig = TrainConfig()


SetupT = TypeVar("SetupT", bound=Setup)
ModelT = TypeVar("ModelT", bound=BaseModel)


class Experiment(Setup):
    """A whole grid file."""

    grid: GridAxes = GridAxes()


class Cell(BaseModel):
    """One resolved combination: everything that determines its results, defaults filled in."""

    model_config = STRICT
    data: DataConfig
    test_data: DataConfig | None
    seed: int
    test_fraction: float
    train: TrainConfig
    backbone: Component
    loss: Component
    splitter: Component

    @property
    def id(self) -> str:
        """Stable id: a hash of the resolved config (same config, same id, across runs and machines)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def flat_params(self) -> dict[str, str]:
        """Flattened `a.b.c -> value` params for MLflow."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, sub)
            else:
                out[prefix] = str(value)

        dumped = self.model_dump(mode="json")
        for axis in ("backbone", "loss", "splitter"):
            dumped[axis] = {"name": dumped[axis]["name"], **dumped[axis]["options"]}
        for section in ("data", "test_data"):
            if dumped[section] is not None:
                dumped[section] = {"source": dumped[section]["source"], **dumped[section]["options"]}
        walk("", dumped)
        return out


def format_error(where: str, err: pydantic.ValidationError) -> str:
    """The first validation problem as one line: `where: field.path: message`."""
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "top level"
    return f"{where}: {loc}: {first['msg']}"


def validate_mapping(model: type[ModelT], raw: Any, where: str) -> ModelT:
    """`raw` validated as `model`; a non-mapping or the first problem is a one-line ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys such as {', '.join(repr(k) for k in model.model_fields)}")
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as err:
        raise ConfigError(format_error(where, err)) from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; unreadable files and syntax errors (with line and column) are one-line ConfigErrors."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{line}: YAML syntax error: {problem}") from None
    return raw


def expand(exp: Experiment) -> list[Cell]:
    """The cartesian product of the grid axes, as resolved cells (duplicates removed, order kept)."""
    cells: dict[str, Cell] = {}
    for backbone, loss, splitter in itertools.product(exp.grid.backbone, exp.grid.loss, exp.grid.splitter):
        cell = Cell(
            data=exp.data,
            test_data=exp.test_data,
            seed=exp.seed,
            test_fraction=exp.test_fraction,
            train=exp.train,
            backbone=backbone,
            loss=loss,
            splitter=splitter,
        )
        cells.setdefault(cell.id, cell)
    return list(cells.values())
