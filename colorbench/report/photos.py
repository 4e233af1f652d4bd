"""The report's photos: two cells side by side on the test photos where they differ most, and the top cells on a few test photos.

Every photo is colorized by the cell's deployed model (`colorbench.deployed`, chosen without the test set) and cached as a PNG in
`report_photos/` beside the report, reused when present (a folder per deployed run, so a retrained cell gets new photos). The
test photos are rebuilt from the cell's resolved config (its `config.yaml`) as training prepared them (`lifecycle.prepare`),
and must be the ones its children scored: the same data fingerprint and the same image names as `test_per_image.csv`.
Torch and the data stack are imported only here, inside the functions that make photos.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from colorbench import tracking
from colorbench.atomic import atomic_path
from colorbench.errors import ColorbenchError, ConfigError
from colorbench.metrics import badness
from colorbench.report.runs import FINGERPRINT, ROW, Runs, per_image_values
from colorbench.report.table import GRAY, match_cell

if TYPE_CHECKING:
    from colorbench.images import ImageSet

FOLDER = "report_photos"  # beside the report
EACH_END = 12  # photos of the comparison: where A beats B most, and where it loses most
STRIP_CELLS, STRIP_PHOTOS = 6, 6  # the strip: the top cells on a few test photos


@dataclass
class Photo:
    """One test photo of the comparison: its place in the test set, its name, the PNGs (`gray`, `a`, `b`, `truth`) and, per
    per-image metric, (A's value, B's value, A's advantage = B's badness - A's: positive where A is better)."""

    index: int
    name: str
    images: dict[str, Path]
    values: dict[str, tuple[float, float, float]]


@dataclass
class Comparison:
    """Cells `a` and `b` on the test photos where they differ most on the report's metric, A's largest advantage first."""

    a: str
    b: str
    photos: list[Photo]
    n_test: int  # test photos in all; the comparison shows at most 2 x EACH_END of them


@dataclass
class Strip:
    """The top cells (rank order) on a few test photos: per photo, its gray input, each cell's colorization and the truth."""

    cells: list[str]
    names: list[str]
    images: dict[str, list[Path]]  # `gray`, `truth` and each cell id -> one PNG per photo


@dataclass
class Photos:
    """What the report shows of the photos, and why a part is missing (empty when nothing is)."""

    comparison: Comparison | None = None
    strip: Strip | None = None
    problems: list[str] = field(default_factory=list)


def compared_cells(table: pd.DataFrame, baseline: str, compare: Sequence[str] | None) -> tuple[str, str] | None:
    """The two cells of the photo comparison (A, B): `compare` (two cell-id prefixes), else the top cell against the baseline (the
    runner-up when the baseline is the top cell); None with one cell."""
    cells = table.loc[table["cell"] != GRAY, "cell"].reset_index(drop=True)
    if compare:
        a, b = (match_cell(cells, prefix, "--compare", "--compare") for prefix in compare)
        if a == b:
            raise ConfigError(f"--compare {' '.join(compare)} names cell {a} twice; give two different cells")
        return a, b
    if len(cells) < 2:
        return None
    return (cells[1] if cells[0] == baseline else cells[0]), baseline


@dataclass
class TestPhotos:
    """An experiment's test photos and the folder their PNGs are cached in."""

    test: ImageSet
    fingerprint: str  # the data fingerprint the cells tagged
    folder: Path  # report_photos/

    def name(self, index: int) -> str:
        """A test photo's file name and its place in the test set (the crops of one photo share its name)."""
        return f"{Path(self.test.names[index]).name} #{index}"

    def truth(self, index: int, part: str) -> Path:
        """Test photo `index` as the model sees it (`gray`: its lightness alone) or as it is (`truth`)."""
        from colorbench.colorize import gray_image

        path = self.folder / f"test-{self.fingerprint}" / f"{index}-{part}.png"
        if not path.is_file():
            save_png(gray_image(self.test.images[index]) if part == "gray" else self.test.images[index], path)
        return path

    def colorized(self, run_id: str, indices: list[int]) -> dict[int, Path]:
        """Test photos `indices` colorized by the deployed model of cell run `run_id` (`colorbench.load`, loaded once, only when a
        photo is not in `report_photos/<deployed run id>/` yet)."""
        folder = self.folder / tracking.deployed_run(run_id)
        paths = {i: folder / f"{i}.png" for i in indices}
        missing = [i for i, path in paths.items() if not path.is_file()]
        if missing:
            from colorbench.colorize import load

            for i, image in zip(missing, load(run_id).colorize_many([self.test.images[i] for i in missing]), strict=True):
                save_png(image, paths[i])
        return paths


def make_photos(runs: Runs, table: pd.DataFrame, pair: tuple[str, str] | None, metric: str, out: Path) -> Photos:
    """The comparison of `pair` and the strip of the top cells, their PNGs in `out/report_photos/` (made or reused; each model is
    loaded once, and only for photos not made yet); a part that cannot be made (the data moved, an old run without config.yaml,
    another test set) is named in `problems`."""
    cells = table.loc[table["cell"] != GRAY, "cell"].tolist()
    by_row = runs.cells.set_index(ROW)
    tagged = by_row.get(FINGERPRINT, pd.Series(None, index=by_row.index, dtype=object))
    source = pair[0] if pair else cells[0]
    try:
        photos = TestPhotos(*test_set(by_row.loc[source, "run_id"]), out / FOLDER)
    except (ColorbenchError, OSError, MlflowException) as err:
        return Photos(problems=[f"no photos: the test photos of cell {source} cannot be rebuilt from its config.yaml ({err})"])
    if tagged[source] != photos.fingerprint:
        return Photos(problems=[f"no photos: the data of cell {source} changed since it was trained (its data fingerprint differs)"])
    same = [c for c in cells if tagged[c] == photos.fingerprint]  # scored on these test photos
    shown, compared = Photos(), {}
    if pair is not None and pair[1] not in same:
        shown.problems.append(f"no photo comparison: cells {pair[0]} and {pair[1]} were tested on different test sets")
    elif pair is not None:
        try:
            compared = compared_photos(runs, pair, metric, photos.test)
        except ConfigError as err:
            shown.problems.append(f"no photo comparison: {err}")
    n, strip_cells = len(photos.test), same[:STRIP_CELLS]
    strip = sorted({int(i) for i in np.linspace(0, n - 1, min(STRIP_PHOTOS, n)).round()})
    wanted = {c: set(strip) for c in strip_cells}
    for c in pair if compared else ():
        wanted.setdefault(c, set()).update(compared)
    made = {c: photos.colorized(by_row.loc[c, "run_id"], sorted(indices)) for c, indices in wanted.items()}
    if compared:
        a, b = pair
        shown.comparison = Comparison(a, b, [
            Photo(i, photos.name(i), {"gray": photos.truth(i, "gray"), "a": made[a][i], "b": made[b][i], "truth": photos.truth(i, "truth")}, values)
            for i, values in compared.items()
        ], n)  # fmt: skip
    images = {part: [photos.truth(i, part) for i in strip] for part in ("gray", "truth")} | {c: [made[c][i] for i in strip] for c in strip_cells}
    shown.strip = Strip(strip_cells, [photos.name(i) for i in strip], images)
    return shown


def compared_photos(runs: Runs, pair: tuple[str, str], metric: str, test: ImageSet) -> dict[int, dict[str, tuple[float, float, float]]]:
    """The test photos where A's advantage over B on `metric` is largest and smallest (`EACH_END` of each), largest first, each
    with its values per per-image metric (A, B, A's advantage), from the cells' children (their mean, as the report's tests use)."""
    by_row = runs.cells.set_index(ROW)
    with tempfile.TemporaryDirectory(prefix="colorbench-report-") as tmp:
        a, b = (per_image_values(runs.folds_of(by_row.loc[c]), Path(tmp) / c) for c in pair)
    if a["image"].tolist() != list(test.names):
        raise ConfigError("the rebuilt test photos are not the ones the cells' test_per_image.csv scored")
    if metric not in a.columns:
        raise ConfigError(f"{metric} is not logged per test image")
    metrics = [m for m in a.columns if m != "image" and m in b.columns]
    advantage = {m: badness(m, b[m].to_numpy(float)) - badness(m, a[m].to_numpy(float)) for m in metrics}
    order = np.argsort(-advantage[metric], kind="stable")
    shown = order if len(order) <= 2 * EACH_END else np.concatenate([order[:EACH_END], order[-EACH_END:]])
    return {int(i): {m: (float(a[m].iloc[i]), float(b[m].iloc[i]), float(advantage[m][i])) for m in metrics} for i in shown}


def test_set(run_id: str) -> tuple[ImageSet, str]:
    """The test photos of cell run `run_id` rebuilt from its deployed child's resolved config, and their data fingerprint."""
    from colorbench.config import Cell
    from colorbench.lifecycle.prepare import prepare_data
    from colorbench.plugins import load_plugins

    child = tracking.deployed_run(run_id)
    load_plugins(tracking.plugins_of(tracking.run_tags(child)))
    with tracking.downloaded(child, "config.yaml") as path:
        config = yaml.safe_load(path.read_text())
    data = prepare_data(Cell.model_validate(config))
    return data.test, data.fingerprint


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a uint8 RGB image as a PNG, atomically (an interrupted report never leaves half a cached photo)."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
