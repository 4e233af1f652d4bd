"""Who trains a cell: claims on cell runs (host, pid, heartbeat), stale claims closed, interrupted runs taken over."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from colorbench.errors import ConfigError
from colorbench.tracking.runs import (
    TAG_CLAIM_HOST,
    TAG_CLAIM_PID,
    TAG_FAILURE,
    TAG_HEARTBEAT,
    TAG_ROLE,
    cell_parent_runs,
    close_run,
    runs_of_cell,
)
from colorbench.tracking.store import HOST, store_lock

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_ENV = "COLORBENCH_STALE_AFTER"  # seconds without a heartbeat before a RUNNING claim counts as abandoned
DEFAULT_STALE_AFTER = 300.0
CLAIM_SETTLE_SECONDS = 2.0  # stores without a lock (servers): wait for earlier claims' writes to land before comparing
_held: set[str] = set()  # cell runs this process is training now


def stale_after() -> float:
    """Seconds without a heartbeat after which a RUNNING claim is abandoned: $COLORBENCH_STALE_AFTER, else 300."""
    value = os.environ.get(STALE_AFTER_ENV, "")
    try:
        return float(value) if value else DEFAULT_STALE_AFTER
    except ValueError:
        raise ConfigError(f"{STALE_AFTER_ENV} must be a number of seconds, got {value!r}") from None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (elsewhere than POSIX: assumed alive, the heartbeat decides)."""
    if pid <= 0 or os.name != "posix":
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def holder(run: Run) -> str:
    """`host:pid` of the process that claimed a cell run."""
    return f"{run.data.tags.get(TAG_CLAIM_HOST, '?')}:{run.data.tags.get(TAG_CLAIM_PID, '?')}"


def is_stale(run: Run, now: float, timeout: float) -> bool:
    """Whether a RUNNING cell run's process is gone: no heartbeat for `timeout` seconds, or claimed on this host by a pid that has
    ended (or by this process, which is not training it). Runs this process is training are never stale."""
    if run.info.run_id in _held:
        return False
    tags = run.data.tags
    try:
        pid, beat = int(tags[TAG_CLAIM_PID]), float(tags[TAG_HEARTBEAT])
    except (KeyError, ValueError):
        return True  # no claim: left by a colorbench from before claims
    if now - beat > timeout:
        return True
    return tags.get(TAG_CLAIM_HOST) == HOST and (pid == os.getpid() or not pid_alive(pid))


def close_stale_runs(experiment_id: str, cell_id: str, keep: Callable[[str], bool] = lambda run_id: False) -> int:
    """Close the RUNNING runs of `cell_id` whose process is gone (`is_stale`) as KILLED, fold runs with their cell run; return how
    many. The runs of a live process (another `colorbench run` training the cell) are left alone, and so are cell runs for which
    `keep(run id)` holds (they can resume, `claim_cell`) with their fold runs."""
    runs = runs_of_cell(experiment_id, cell_id)
    now, timeout = time.time(), stale_after()
    cells = {r.info.run_id: r for r in runs if r.data.tags.get(TAG_ROLE) == "cell"}
    live = {i for i, r in cells.items() if r.info.status == "RUNNING" and (not is_stale(r, now, timeout) or keep(i))}
    closed = 0
    for run in runs:
        owner = cells.get(run.info.run_id) or cells.get(run.data.tags.get("mlflow.parentRunId", ""))  # the cell run itself, or a fold's
        if run.info.status != "RUNNING" or owner is None or owner.info.run_id in live:
            continue
        close_run(run.info.run_id, "KILLED", f"interrupted: its process ({holder(owner)}) ended before the run finished")
        closed += 1
    return closed


@dataclass(frozen=True)
class Claim:
    """Who trains a cell: this process (`won`; `run_id` is its new RUNNING cell run) or another one (its run, `holder` host:pid)."""

    won: bool
    run_id: str
    holder: str = ""
    finished: bool = False
    resumed: bool = False  # `run_id` is an interrupted cell run taken over to continue its folds


def claim_tags() -> dict[str, str]:
    """The tags that say this process holds a cell run: host, pid and a fresh heartbeat."""
    return {TAG_CLAIM_HOST: HOST, TAG_CLAIM_PID: str(os.getpid()), TAG_HEARTBEAT: str(time.time())}


def orphan(rivals: list[Run], resumable: Callable[[str], bool]) -> Run | None:
    """The latest interrupted cell run (RUNNING with its process gone, or KILLED) that `resumable` accepts, unless the cell
    FINISHED or a live process holds it."""
    now, timeout = time.time(), stale_after()
    if any(r.info.status == "FINISHED" or (r.info.status == "RUNNING" and not is_stale(r, now, timeout)) for r in rivals):
        return None
    left = [r for r in rivals if r.info.status in ("RUNNING", "KILLED") and resumable(r.info.run_id)]
    return max(left, key=lambda r: (r.info.start_time, r.info.run_id), default=None)


def take_over(run: Run, locked: bool) -> bool:
    """Claim an interrupted cell run for this process: RUNNING again, failure tag gone, claim tags ours. On stores without a lock,
    after CLAIM_SETTLE_SECONDS the claim must still be ours (else another process took it: False)."""
    client, run_id = MlflowClient(), run.info.run_id
    client.update_run(run_id, status="RUNNING")
    if TAG_FAILURE in run.data.tags:
        client.delete_tag(run_id, TAG_FAILURE)
    mine = claim_tags()
    for key, value in mine.items():
        client.set_tag(run_id, key, value)
    if not locked:
        time.sleep(CLAIM_SETTLE_SECONDS)
    return client.get_run(run_id).data.tags.get(TAG_CLAIM_PID) == mine[TAG_CLAIM_PID]


def claim_cell(experiment_id: str, cell_id: str, name: str, tags: dict[str, str], resumable: Callable[[str], bool] | None = None) -> Claim:
    """Claim a cell: create its cell run (RUNNING, tagged with host, pid and heartbeat), then keep it only if no other process holds
    the cell. The claim is lost (and its run deleted) if a cell run of `cell_id` FINISHED, or a live RUNNING one (not `is_stale`) came
    first: on SQLite, create and read happen under `store_lock`, so every run seen came first and exactly one claimer wins; on other
    stores the claimer waits CLAIM_SETTLE_SECONDS before reading and the earliest run by (start time, run id) wins.

    With `resumable`, an interrupted cell run it accepts (`orphan`) is taken over instead of creating a new one (`take_over`).
    """
    client = MlflowClient()
    with store_lock() as locked:
        found = orphan(cell_parent_runs(experiment_id, cell_id), resumable) if resumable else None
        if found is not None and take_over(found, locked):
            return Claim(True, found.info.run_id, resumed=True)
        own = client.create_run(experiment_id, tags=resolve_tags({**tags, TAG_ROLE: "cell", **claim_tags()}), run_name=name)
        if not locked:
            time.sleep(CLAIM_SETTLE_SECONDS)
        rivals = [r for r in cell_parent_runs(experiment_id, cell_id) if r.info.run_id != own.info.run_id]
    now, timeout = time.time(), stale_after()
    order = (own.info.start_time, own.info.run_id)
    running = [r for r in rivals if r.info.status == "RUNNING" and (locked or (r.info.start_time, r.info.run_id) < order)]
    first = [r for r in rivals if r.info.status == "FINISHED"] or sorted(
        (r for r in running if not is_stale(r, now, timeout)), key=lambda r: (r.info.start_time, r.info.run_id)
    )
    if not first:
        return Claim(True, own.info.run_id)
    client.delete_run(own.info.run_id)
    return Claim(False, first[0].info.run_id, holder(first[0]), first[0].info.status == "FINISHED")


@contextmanager
def heartbeat(run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Hold a claimed cell run for the block: a daemon thread refreshes its heartbeat tag every `every` seconds."""
    client, stop = MlflowClient(), threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                client.set_tag(run_id, TAG_HEARTBEAT, str(time.time()))
            except Exception as err:  # noqa: BLE001 - a missed beat is retried; a claim goes stale only after stale_after() s without one
                logging.getLogger(__name__).debug("heartbeat of run %s failed: %s", run_id, err)

    thread = threading.Thread(target=beat, name=f"colorbench-heartbeat-{run_id[:8]}", daemon=True)
    _held.add(run_id)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        _held.discard(run_id)
