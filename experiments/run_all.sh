#!/usr/bin/env bash
# Reproduces everything under results/ (run from the repository root, with ../shared/data present).
# Uses ./mlflow.db as the store; each step resumes if interrupted.
set -euo pipefail
colorbench run experiments/losses.yaml
colorbench report --experiment bsds-losses --out results/bsds-losses
python experiments/mask_figure.py --experiment bsds-losses --out results/bsds-losses/masks.png
colorbench run experiments/study.yaml
colorbench report --experiment bsds-depth-loss-validation --out results/bsds-depth-loss-validation --baseline 330125b40350
colorbench run experiments/validation.yaml
colorbench report --experiment bsds-validation-schemes --out results/bsds-validation-schemes --baseline 415b58b8df59
colorbench run experiments/validation-repeats.yaml
colorbench report --experiment bsds-validation-repeats --out results/bsds-validation-repeats --baseline 3b99de80e50d
