"""The one lifecycle of a cell, for the grid (`runner`), each search trial (`search`) and every executor (`executors`).

1. Prepare the data once (`prepare.prepare_data`; the decode-once cache makes it cheap in a worker too) and the gray baseline.
2. Hold the cell's parent run: claimed for a grid cell (`cell.claim`), created for a search trial (`cell.CellRun`).
3. Train its folds where an executor puts them: each `FoldTask` trains in its own fold run (`fold.run_fold`), in this process
   (`fold.run_here`) or in a worker (`fold.run_task`); `executors` decides where. A search sends each trial whole to the same
   executors (`search.trial.TrialTask`), whose folds train one after another in its worker.
   Each split trains `train.repeats` times (training seed `train.seed + 1000 x split + repeat`, `splitters.training_seed`): one
   child run per (split, repeat).
4. Finish the cell (`cell.CellRun.finish`): means/stds over the children, the variance components (between splits, between training
   seeds, over test images), the gray baseline and the deployed child (best validation score, never a test metric), run FINISHED.

One failure policy: any exception in a fold fails that cell (its run FAILED, the reason in `colorbench.failure`) and the grid or
search goes on; a pruned trial ends KILLED (Optuna: PRUNED); Ctrl-C and SIGTERM end the open runs KILLED; a failure of the
tracking store itself ends the grid with one StoreError line (`tracking.store_guard`).

The package's modules are imported by name (this file imports nothing), so the CLI reads the executors' registry without torch.
"""
