"""The schema of grid files: pydantic models, YAML reading, grid expansion into `Cell`s, flat params and stable ids.

Pure schema: nothing here knows the registries. Checking names and options against them, and filling in their defaults,
is `colorbench.resolve`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from colorbench.errors import ConfigError

STRICT = ConfigDict(extra="forbid")
OMIT_AT_DEFAULT = ("repeats", "refit", "decode")  # TrainConfig fields left out of dumps (and so of cell ids) at their defaults


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
    """`source` names a registered image source; `subsample` (any source) draws that many of its photos, by photo, seeded by the
    data seed, before the test carve-out; every other key is an option of the source."""

    model_config = STRICT
    source: str = "builtin"
    subsample: int | None = Field(None, gt=0, strict=True)
    options: dict[str, Any] = {}

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"source": value}
        if isinstance(value, dict) and "options" not in value:
            own = {k: value[k] for k in ("source", "subsample") if k in value}
            return {"source": "builtin", **own, "options": {k: v for k, v in value.items() if k not in own}}
        return value

    @pydantic.model_serializer(mode="wrap")
    def _omit_subsample(self, handler: pydantic.SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`subsample` (added later) is left out when unset, so earlier cell ids stay the same."""
        return omit_defaults(self, handler(self), ("subsample",))


TEMPERATURES = (0.1, 0.2, 0.3, 0.38, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CHROMA_SCALES = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.6, 1.8, 2.0)


class DecodeRule(BaseModel):
    """`train.decode`: after a fold's best checkpoint, choose its decoding on the fold's VALIDATION rows.

    Bin heads (cross-entropy) choose the annealed-mean temperature T from `temperatures`, regression heads the chroma scale s
    (ab x s) from `chroma_scales`. Among the candidates whose validation colourfulness ratio is at least
    `min_colorfulness_ratio` (all, when unset), the best by the validation metric `choose` (its table direction) wins; when
    none reaches the minimum, the most colourful does. Ties go to the first candidate listed.
    """

    model_config = STRICT
    choose: str = Field("val_psnr", pattern=r"^val_[a-z][a-z0-9_]*$")  # a validation metric: `val_<metric of the table>`
    min_colorfulness_ratio: float | None = Field(None, gt=0)
    temperatures: list[float] = Field(list(TEMPERATURES), min_length=1)
    chroma_scales: list[float] = Field(list(CHROMA_SCALES), min_length=1)

    @pydantic.field_validator("temperatures", "chroma_scales")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(not v > 0 for v in values):
            raise ValueError(f"every candidate must be > 0, got {values}")
        return values


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
    repeats: int = Field(1, ge=1, strict=True)  # trainings per split, with training seeds seed + 1000 x split + 0, 1, ...
    refit: bool = False  # after the splits, train on train + validation for the children's median best epoch and deploy that
    decode: DecodeRule | None = None  # choose each fold's decoding on its validation rows (None: the loss's own decoding)
    # save the fold's training state every this many epochs, to resume inside a fold; it cannot change results, so it is left
    # out of config dumps and cell ids
    checkpoint_every: int = Field(1, gt=0, strict=True, exclude=True)

    @pydantic.model_validator(mode="after")
    def _decode_needs_validation(self) -> TrainConfig:
        if self.decode is not None and self.refit:
            raise ValueError("train.decode chooses on validation rows, which a refit (train.refit) trains on: drop one of the two")
        return self

    @pydantic.model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler: pydantic.SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`repeats`, `refit` and `decode` (added later) are left out at their defaults, so earlier cell ids stay the same."""
        return omit_defaults(self, handler(self), OMIT_AT_DEFAULT)


def omit_defaults(model: BaseModel, dumped: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """`dumped` (a dump of `model`) without the `keys` whose values are their fields' defaults."""
    for key in keys:
        if key in dumped and dumped[key] == type(model).model_fields[key].default:
            dumped.pop(key)
    return dumped


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

    @pydantic.field_validator("test_data")
    @classmethod
    def _fixed_test_set(cls, value: DataConfig | None) -> DataConfig | None:
        if value is not None and value.subsample is not None:
            raise ValueError("subsample draws the training pool (data.subsample); a test_data set is used whole, the same in every replicate")
        return value

    def cell(self, backbone: Component, loss: Component, splitter: Component, train: TrainConfig | None = None, replicate: int = 0) -> Cell:
        """The resolved cell of these components on this file's data, test set and training settings (or `train`), in `replicate`
        (data seed `seed + replicate`)."""
        return Cell(
            data=self.data,
            test_data=self.test_data,
            seed=self.seed + replicate,
            test_fraction=self.test_fraction,
            train=train or self.train,
            backbone=backbone,
            loss=loss,
            splitter=splitter,
            replicate=replicate,
        )


SetupT = TypeVar("SetupT", bound=Setup)
ModelT = TypeVar("ModelT", bound=BaseModel)


class ReportConfig(BaseModel):
    """How `colorbench report` reads the experiment, decided before any result exists."""

    model_config = STRICT
    baseline: str | None = Field(None, min_length=1)  # a cell id (or unique prefix) to compare every cell with; default: the first cell


class Experiment(Setup):
    """A whole grid file. `replicates: R` runs the whole experiment R times, replicate r with data seed `seed + r` (its own
    subsample, test carve-out and splits): R independent data sets."""

    replicates: int = Field(1, ge=1, strict=True)
    grid: GridAxes = GridAxes()
    report: ReportConfig = ReportConfig()


class Cell(BaseModel):
    """One resolved combination in one replicate: everything that determines its results, defaults filled in. `seed` is the data
    seed of its replicate (the experiment's seed + `replicate`)."""

    model_config = STRICT
    data: DataConfig
    test_data: DataConfig | None
    seed: int
    test_fraction: float
    train: TrainConfig
    backbone: Component
    loss: Component
    splitter: Component
    replicate: int = Field(0, ge=0)

    @pydantic.model_serializer(mode="wrap")
    def _omit_replicate_zero(self, handler: pydantic.SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`replicate` (added later) is left out at 0, so the cell ids of an experiment without replicates stay the same."""
        return omit_defaults(self, handler(self), ("replicate",))

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
                options = dumped[section].pop("options")
                dumped[section] = {**dumped[section], **options}
        walk("", dumped)
        return out | {"replicate": str(self.replicate)}


def format_error(where: str, err: pydantic.ValidationError) -> str:
    """The first validation problem as one line: `where: field.path: message`."""
    first = err.errors()[0]
    loc = ".".join(str(x) if str(x).isprintable() and str(x) else repr(x) for x in first["loc"]) or "top level"  # a key "\n" stays on the line
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


def sub_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (`Model` or `Model | None`), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for m in map(sub_model, typing.get_args(annotation)) if m is not None), None)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def is_free_form(model: type[BaseModel] | None, annotation: Any) -> bool:
    """A mapping whose keys the schema does not list: a dict field, or a registry entry's options (`data`, a component)."""
    return typing.get_origin(annotation) is dict or (model is not None and "options" in model.model_fields)


def apply_override(raw: dict[str, Any], text: str, model: type[BaseModel]) -> dict[str, Any]:
    """A copy of the file's mapping `raw` with one `dotted.key=YAML value` override applied; a key the schema lacks, a malformed
    override or a YAML error is a one-line ConfigError with a "did you mean". Values are checked afterwards, like the file's."""
    where = f"override {text!r}"
    key, sep, value_text = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"{where}: write KEY=VALUE with a dotted key, e.g. train.epochs=5 or 'grid.loss=[mse,ce-rebalanced]'")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: YAML error in the value: {getattr(err, 'problem', None) or str(err).splitlines()[0]}") from None
    out = copy.deepcopy(raw)
    node, current = out, model
    for depth, part in enumerate(parts):
        fields = current.model_fields
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" Did you mean {'.'.join([*parts[:depth], close[0]])!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {'.'.join(parts[: depth + 1])!r}.{hint} Keys here: {', '.join(fields)}")
        if depth == len(parts) - 1:
            node[part] = value
            return out
        annotation = fields[part].annotation
        child_model = sub_model(annotation)
        child = node.get(part)
        if isinstance(child, str) and child_model is not None and is_free_form(child_model, annotation):
            child = {next(iter(child_model.model_fields)): child}  # `data: builtin`, `backbone: resnet18-6` shorthand
        child = {} if child is None else child
        if not isinstance(child, dict) or (child_model is None and not is_free_form(None, annotation)):
            raise ConfigError(f"{where}: {'.'.join(parts[: depth + 1])} takes a value, not sub-keys; write {'.'.join(parts[: depth + 1])}=VALUE")
        node[part] = child
        if is_free_form(child_model, annotation):
            child[".".join(parts[depth + 1 :])] = value  # an option or a space entry: the registry or the space checks it
            return out
        node, current = child, child_model
    return out


def named_baseline(exp: Experiment, cells: list[Cell]) -> str | None:
    """The id of the cell that `report.baseline` names among `cells` (the grid's, in file order); None when it names none. A prefix
    that matches no cell, or several, is a one-line ConfigError."""
    prefix = exp.report.baseline
    if prefix is None:
        return None
    matches = [c.id for c in cells if c.id.startswith(prefix)]
    if len(matches) != 1:
        problem = "matches no cell of the grid" if not matches else f"matches {len(matches)} cells ({', '.join(matches)})"
        raise ConfigError(f"report.baseline {prefix!r} {problem}; its cells (colorbench run --dry-run lists them): {', '.join(c.id for c in cells)}")
    return matches[0]


def expand(exp: Experiment) -> list[Cell]:
    """The cartesian product of the grid axes in each replicate, as resolved cells (duplicates removed, order kept): replicate r's
    cells have data seed `exp.seed + r`; replicate 0's are the cells of the same grid without replicates."""
    cells: dict[str, Cell] = {}
    for replicate in range(exp.replicates):
        for backbone, loss, splitter in itertools.product(exp.grid.backbone, exp.grid.loss, exp.grid.splitter):
            cell = exp.cell(backbone, loss, splitter, replicate=replicate)
            cells.setdefault(cell.id, cell)
    return list(cells.values())
