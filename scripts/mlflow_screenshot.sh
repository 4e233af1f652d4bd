#!/usr/bin/env bash
# Reproduce docs/mlflow-runs.png: train a small real grid (2 cells, 3 fold runs, on the built-in photos) into a temporary
# MLflow store, serve it with `mlflow ui` on 127.0.0.1, and screenshot the experiment's training-runs view in headless Chromium
# (Debian: apt-get install chromium). Usage: scripts/mlflow_screenshot.sh [OUT.png]   (run from the repository root)
set -euo pipefail
out=$(realpath -m "${1:-docs/mlflow-runs.png}")
port=${MLFLOW_PORT:-5000}
work=$(mktemp -d)
trap 'kill "$ui" 2>/dev/null || true; rm -rf "$work"' EXIT
ui=
cat > "$work/grid.yaml" <<'YAML'
experiment: ui-demo
data: {source: builtin, image_size: 32, crops_per_photo: 3}
train: {epochs: 2, batch_size: 8, lr: 1.0e-3}
test_fraction: 0.25
grid:
  loss: [mse]
  splitter: [{name: holdout, val_fraction: 0.3}, {name: kfold, k: 2}]
YAML
store="sqlite:///$work/mlflow.db"
COLORBENCH_CACHE_DIR="$work/cache" python -m colorbench.cli run "$work/grid.yaml" --tracking-uri "$store"
id=$(python -c "from mlflow.tracking import MlflowClient; print(MlflowClient('$store').get_experiment_by_name('ui-demo').experiment_id)")
mlflow ui --backend-store-uri "$store" --host 127.0.0.1 --port "$port" >"$work/ui.log" 2>&1 &
ui=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
url="http://127.0.0.1:$port/#/experiments/$id/runs"
# --timeout: wait 20 s for the page's scripts to draw the table, then shoot (the UI keeps polling, so "loaded" never comes)
timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,700 --timeout=20000 \
  --screenshot="$out" "$url" 2>/dev/null || true
test -s "$out"
echo "wrote $out from $url"
