"""How colorbench's MLflow bookkeeping grows with the store: a tiny cell and a tiny search trial timed against a store of 100 and
of 5,000 finished runs.

For each N (`--sizes`, default 100 and 5,000) the script fills a fresh SQLite store with N synthetic FINISHED runs through MLflow's
client, with colorbench's tags, params and metrics: half in the grid's experiment (cell runs, two fold runs under each), half in
the search's (trial runs of the same study, two fold runs under each). Then, in interleaved rounds (`--repeats`, default 5), it
times against each store
- a tiny cell: `run_grid` on a one-cell grid (resnet18-6 + mse, hold-out, one epoch at 16 px; a new cell each round), and
- a tiny search trial: `run_search` adding one trial (the same model, `train.lr` sampled) to the study,
each from the call to its return, as `colorbench run` and `colorbench search` spend it. Training is the same whatever the store,
so what grows is the bookkeeping: run queries, claims, the deployed child, the model. One line per store and round, the medians,
and last

    bookkeeping ratio cell=X trial=Y

X, Y: the median wall-clock seconds against the largest store over those against the smallest. Target: at most 1.3. The line
before it, `bookkeeping cpu ratio`, is the same over this process's CPU seconds, which other processes on a busy machine disturb
far less.

    OMP_NUM_THREADS=1 python benchmarks/bookkeeping.py                        # N = 100 and 5,000, 5 rounds (5-20 min on 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/bookkeeping.py --sizes 10 40 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

GRID = {
    "experiment": "bench-grid",
    "data": {"source": "builtin", "image_size": 16, "crops_per_photo": 2},
    "train": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3},
    "test_fraction": 0.25,
    "grid": {"backbone": ["resnet18-6"], "loss": ["mse"], "splitter": [{"name": "holdout", "val_fraction": 0.3}]},
}
SEARCH = {
    "experiment": "bench-search",
    "data": GRID["data"],
    "train": GRID["train"],
    "test_fraction": 0.25,
    "splitter": {"name": "holdout", "val_fraction": 0.3},
    "space": {"train.lr": {"loguniform": [3.0e-4, 3.0e-3]}},
    "objective": {"metric": "val_psnr", "direction": "maximize"},
    "sampler": "random",
    "pruner": "none",
}
FOLDS = 2  # fold runs under each synthetic cell or trial run


class Seconds(NamedTuple):
    wall: float
    cpu: float


def synthetic_runs(uri: str, n: int, seed: int = 0) -> None:
    """N FINISHED runs through MLflow's client: cell runs (grid experiment) and trial runs (search experiment, study `bench-search`),
    each with FOLDS fold runs, carrying the tags, params and metrics colorbench logs."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from colorbench import tracking
    from colorbench.config import expand
    from colorbench.metrics import METRICS
    from colorbench.resolve import parse_experiment

    client, rng = MlflowClient(uri), random.Random(seed)
    params = expand(parse_experiment(GRID))[0].flat_params()
    names = [f"test_{m}" for m in METRICS] + ["best_epoch", "best_val_loss", "train_seconds"]
    now = int(time.time() * 1000)

    def make(experiment_id: str, tags: dict[str, str], metrics: list[str]) -> str:
        run_id = client.create_run(experiment_id, start_time=now, tags=tags).info.run_id
        values = [Metric(k, rng.random(), now, 0) for k in metrics]
        client.log_batch(run_id, metrics=values, params=[Param(k, v) for k, v in {**params, "train.lr": str(rng.random())}.items()])
        client.set_terminated(run_id, "FINISHED")
        return run_id

    experiments = {role: tracking.open_experiment(uri, config["experiment"]) for role, config in (("cell", GRID), ("trial", SEARCH))}
    made = 0
    while made < n:
        role = "cell" if (made // (FOLDS + 1)) % 2 == 0 else "trial"
        number = made // (2 * (FOLDS + 1))
        tags = {
            tracking.TAG_ROLE: role, tracking.TAG_CELL: f"{rng.getrandbits(48):012x}", tracking.TAG_VERSION: "0.1.0", tracking.TAG_COMMIT: "synthetic",
            tracking.TAG_FINGERPRINT: "synthetic", tracking.TAG_PLUGINS: "", tracking.TAG_CLAIM_HOST: "elsewhere", tracking.TAG_CLAIM_PID: "1",
            tracking.TAG_HEARTBEAT: str(now / 1000), tracking.TAG_DEPLOYED: "synthetic",
        }
        if role == "trial":
            tags.update({
                tracking.TAG_STUDY: SEARCH["experiment"], tracking.TAG_TRIAL: str(1_000_000 + number), tracking.TAG_STATE: "COMPLETE",
                tracking.TAG_STORAGE: "synthetic", tracking.TAG_SAMPLED: "train.lr=0.001",
            })
        parent = make(experiments[role], tags, [f"{k}_{s}" for k in names for s in ("mean", "std")] + ["n_folds"])
        made += 1
        for fold in range(min(FOLDS, n - made)):
            make(experiments[role], tracking.fold_tags(tags, fold, 0, 0, parent), names)
            made += 1


def timed(call: Callable[[], object]) -> Seconds:
    """Wall-clock and CPU seconds (this process, all its threads) of `call()`. On a busy machine the CPU time is the steadier figure:
    other processes stretch the wall clock, not the work done here (the SQLite store is queried in this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return Seconds(time.perf_counter() - wall, time.process_time() - cpu)


def time_cell(uri: str, round_: int) -> Seconds:
    """`run_grid` on a one-cell grid whose cell is new in this round."""
    from colorbench.resolve import parse_experiment
    from colorbench.runner import run_grid

    grid = parse_experiment({**GRID, "train": {**GRID["train"], "lr": 1.0e-3 * (1 + round_ / 100)}})

    def cell() -> None:
        [outcome], _ = run_grid(grid, uri)
        assert outcome.failure is None and not outcome.skipped, outcome

    return timed(cell)


def time_trial(uri: str, out: Path) -> Seconds:
    """`run_search` adding one trial to the study."""
    from colorbench.search.optimize import run_search
    from colorbench.search.space import parse_search

    search = parse_search(SEARCH)

    def trial() -> None:
        outcome = run_search(search, n_trials=1, tracking_uri=uri, out_dir=out)
        assert outcome.counts["FAIL"] == 0, outcome.counts

    return timed(trial)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 5000], metavar="N", help="runs in each store (default: 100 5000)")
    parser.add_argument("--repeats", type=int, default=5, metavar="R", help="rounds of timings (default: 5)")
    parser.add_argument("--folder", type=Path, help="where the stores go (default: a temporary folder, removed after)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="colorbench-bookkeeping-") as tmp:
        folder = args.folder or Path(tmp)
        os.environ.setdefault("COLORBENCH_CACHE_DIR", str(folder / "decode-cache"))
        from colorbench.tracking import absolute_uri

        stores = {}
        for n in args.sizes:
            (folder / f"n{n}").mkdir(parents=True, exist_ok=True)
            stores[n] = absolute_uri(f"sqlite:///{folder / f'n{n}' / 'mlflow.db'}")
            started = time.perf_counter()
            synthetic_runs(stores[n], n)
            print(f"bookkeeping store n={n} filled in {time.perf_counter() - started:.0f} s", flush=True)
            time_cell(stores[n], -1)  # untimed: imports, torch and the decode cache; the study's first trial creates Optuna's tables
            time_trial(stores[n], folder / f"n{n}" / "figures")
        cells: dict[int, list[Seconds]] = {n: [] for n in args.sizes}
        trials: dict[int, list[Seconds]] = {n: [] for n in args.sizes}
        for round_ in range(args.repeats):
            for n in args.sizes:
                cells[n].append(time_cell(stores[n], round_))
                trials[n].append(time_trial(stores[n], folder / f"n{n}" / "figures"))
                print(f"bookkeeping round={round_} n={n} cell_s={cells[n][-1].wall:.2f} (cpu {cells[n][-1].cpu:.2f}) "
                      f"trial_s={trials[n][-1].wall:.2f} (cpu {trials[n][-1].cpu:.2f})", flush=True)

        def median(times: list[Seconds], clock: str) -> float:
            return statistics.median(getattr(t, clock) for t in times)

        for n in args.sizes:
            print(f"bookkeeping n={n} cell_s={median(cells[n], 'wall'):.2f} (cpu {median(cells[n], 'cpu'):.2f}) "
                  f"trial_s={median(trials[n], 'wall'):.2f} (cpu {median(trials[n], 'cpu'):.2f}) (medians of {args.repeats})")
        small, large = min(args.sizes), max(args.sizes)
        for clock, label in (("cpu", "bookkeeping cpu ratio"), ("wall", "bookkeeping ratio")):
            cell = median(cells[large], clock) / median(cells[small], clock)
            trial = median(trials[large], clock) / median(trials[small], clock)
            print(f"{label} cell={cell:.2f} trial={trial:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
