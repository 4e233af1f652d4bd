"""The report where MLflow users look: the experiment's `report` run holds report.html and the files beside it, and the experiment's
description links to that page (through `colorbench.tracking`; a store that refuses the write leaves the files on disk complete)."""

from __future__ import annotations

import datetime
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from colorbench import tracking
from colorbench.report.html import NAME

NOTE_LEAD = "**colorbench report**"  # starts the description's line this module writes (and replaces), the rest is the user's


def publish(experiment_id: str, files: list[Path], metric: str) -> tuple[str, str]:
    """Log `files` on the experiment's report run and link its report.html from the experiment's description; returns the page's
    address in the MLflow UI, and what went wrong (empty when nothing did)."""
    try:
        run_id = tracking.report_run(experiment_id)
        tracking.log_artifacts(run_id, files)
        link = tracking.run_url(experiment_id, run_id, "", artifact=NAME)  # relative: whatever address the UI is served at
        made = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        line = f"{NOTE_LEAD}: [{NAME}]({link}) on test {metric}, the test photos side by side ({made})"
        note = tracking.experiment_tag(experiment_id, tracking.TAG_NOTE) or ""
        kept = "\n".join(text for text in note.splitlines() if not text.startswith(NOTE_LEAD)).strip()
        tracking.set_experiment_tag(experiment_id, tracking.TAG_NOTE, f"{kept}\n\n{line}" if kept else line)
    except Exception as err:  # a store that refuses the write (read-only, gone) leaves the report on disk complete
        if not (isinstance(err, (MlflowException, OSError)) or tracking.store_failed(err)):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return "", f"the report was not logged to MLflow ({first[:300]}); the files in its folder are complete"
    return tracking.run_url(experiment_id, run_id, tracking.ui_address(mlflow.get_tracking_uri()), artifact=NAME), ""
