#!/usr/bin/env bash
# The MiniLM training-path comparison of docs/results.md: for every 2-bit initializer, qpeft trains
# the first STEPS optimizer steps of STS-B (2-bit MXINT b32, rank 8, batch 64, max length 128,
# dropout off) with --dump-batches, and scripts/check_training.py replays them in PyTorch (f32 and
# f64) and compares per-step losses and the final adapters and head.
#
# usage: scripts/check_training_minilm.sh QPEFT PYTHON OUT [STEPS [SET …]]   (PYTHON: the bench
#   venv's; each SET is one more --set for every row, e.g. train.optimizer=riemannian-adamw)
set -euo pipefail
qpeft=${1:?the qpeft binary}
python=${2:?a python with bench/requirements.txt}
out=${3:?an output folder}
steps=${4:-10}
shift $(( $# < 4 ? $# : 4 ))
repo="$(cd "$(dirname "$0")/.." && pwd)"
common=(--set model.dropout=0 --set adapter.dropout=0 --set quant.calib=stsb
  --set train.max_length=128 --set train.epochs=3)
for set in "$@"; do common+=(--set "$set"); done
mkdir -p "$out"
for row in qlora qera-exact loftq srr-grad srr-update; do
  case $row in
    srr-grad) extra=(--set adapter.init=srr --set adapter.preserved_scaling=grad) ;;
    srr-update) extra=(--set adapter.init=srr --set adapter.preserved_scaling=update) ;;
    *) extra=(--set "adapter.init=$row") ;;
  esac
  run="$out/$row"
  if [ ! -f "$run/dump/trace.json" ]; then
    rm -rf "$run"
    "$qpeft" train "$repo/recipes/stsb.toml" "${common[@]}" "${extra[@]}" \
      --dump-batches "$steps" --out "$run"
  fi
  "$python" "$repo/scripts/check_training.py" "$run" --float64 --tolerance 1 > "$run/check.json"
  "$python" - "$row" "$run/check.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[2]))
print(f"{sys.argv[1]:12s} loss rel {c['max_loss_rel_err']:.1e}  final vs torch f32 {c['max_tensor_rel_err']:.1e}"
      f"  torch f32→f64 {c['pytorch_f32_to_f64'][0]:.1e}  qpeft→f64 {c['qpeft_f32_to_f64'][0]:.1e}"
      f"  ({c['worst_tensor']})")
PY
done
