#!/usr/bin/env bash
# Reproduces everything under results/ (run from the repository root, with ../shared/data present).
# Uses ./mlflow.db as the store; each step resumes if interrupted.
set -euo pipefail
colorbench run experiments/losses.yaml
colorbench report --experiment bsds-losses --out results/bsds-losses
python experiments/mask_figure.py --experiment bsds-losses --out results/bsds-losses/masks.png
colorbench run experiments/study.yaml
colorbench report --experiment bsds-depth-loss-validation --out results/bsds-depth-loss-validation --all-pairs
colorbench run experiments/validation.yaml
colorbench report --experiment bsds-validation-schemes --out results/bsds-validation-schemes --all-pairs
colorbench run experiments/validation-repeats.yaml
colorbench report --experiment bsds-validation-repeats --out results/bsds-validation-repeats --all-pairs
OMP_NUM_THREADS=1 colorbench run experiments/validation.yaml experiment=bsds-validation-48 data.image_size=48 test_data.image_size=48 \
    train.repeats=2 --executor process --workers 2
colorbench report --experiment bsds-validation-48 --out results/bsds-validation-48 --all-pairs
OMP_NUM_THREADS=1 colorbench run experiments/validation.yaml experiment=bsds-validation-64 data.image_size=64 test_data.image_size=64 \
    train.epochs=6 train.repeats=3 --executor process --workers 2
colorbench report --experiment bsds-validation-64 --out results/bsds-validation-64 --all-pairs
