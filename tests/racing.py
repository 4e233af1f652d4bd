"""Concurrent writers meeting in one tracking store, as worker processes starting their first cells together do."""

from __future__ import annotations

import threading

from mlflow.tracking import MlflowClient

from colorbench import tracking


def log_the_same_dataset_at_once(uri: str, runs: int = 8, rounds: int = 4) -> list[BaseException]:
    """`runs` threads log the same (new) dataset inputs to their own runs at the same instant, `rounds` times: what worker
    processes starting their first cells together do. Returns the errors; every run must carry the three inputs."""
    client = MlflowClient(uri)
    experiment = client.create_experiment("datasets-at-once")
    errors: list[BaseException] = []
    for round_ in range(rounds):
        run_ids = [client.create_run(experiment).info.run_id for _ in range(runs)]
        barrier = threading.Barrier(runs)

        def log(run_id: str, fingerprint: str = f"fingerprint-{round_}", barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                tracking.log_datasets(run_id, {"source": "builtin"}, fingerprint)
            except Exception as err:  # noqa: BLE001 - collected for the assertion
                errors.append(err)

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
        [thread.start() for thread in threads]
        [thread.join() for thread in threads]
        assert errors or all(len(client.get_run(r).inputs.dataset_inputs) == 3 for r in run_ids)
    return errors

