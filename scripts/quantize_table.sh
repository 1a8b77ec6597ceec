#!/usr/bin/env bash
# The PTQ solvers side by side on one grid (asymmetric min-max, groups of 128, act-order) at
# 2, 3 and 4 bits: `qpeft quantize` of every encoder linear of MODEL, calibrated on 128
# CALIB texts, and, when EVAL_TASK is set, the dev metric before and after (MODEL must then be
# a fine-tuned classifier, e.g. a `qpeft export` folder). Prints the table: mean relative
# layer-output error on each method's own inputs ‖(Ŵ−W)X_q‖/‖WX_q‖ and to the full-precision
# output ‖ŴX_q − WX_f‖/‖WX_f‖, total time, dev metric.
# Usage: MODEL=… CALIB=sst2 EVAL_TASK=sst2 scripts/quantize_table.sh [OUT_DIR]
set -euo pipefail
out=${1:-target/quantize-table}
model=${MODEL:-sentence-transformers/all-MiniLM-L6-v2}
calib=${CALIB:-rte}
eval_args=()
[ -n "${EVAL_TASK:-}" ] && eval_args=(--eval "$EVAL_TASK")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/qpeft-target}
cargo build --release --quiet
qpeft=$CARGO_TARGET_DIR/release/qpeft
rows="rtn gptq stochastic-optq gptaq rescomp qronos qronos-damp coreq coreq-sampled kcoreq"
for bits in 2 3 4; do
  for row in $rows; do
    dir=$out/b$bits-$row
    [ -f "$dir/report.json" ] && continue
    case $row in
      stochastic-optq) args=(--method gptq --stochastic) ;;
      coreq-sampled) args=(--method coreq --alpha-mode sampled) ;;
      qronos-damp) args=(--method qronos --qronos-damp 0.01) ;;
      *) args=(--method "$row") ;;
    esac
    "$qpeft" quantize "${args[@]}" --grid asym --group 128 --bits "$bits" --calib "$calib" \
      --model "$model" "${eval_args[@]}" --out "$dir" >/dev/null 2>&1
    rm -f "$dir/model.safetensors"
  done
done
python3 - "$out" "$rows" <<'PY'
import json, sys, pathlib
out, rows = pathlib.Path(sys.argv[1]), sys.argv[2].split()
reports = {(b, r): json.loads((out / f"b{b}-{r}" / "report.json").read_text()) for b in (2, 3, 4) for r in rows}
first = reports[(2, rows[0])]
if first.get("eval"):
    print(f"{first['eval']['task']} dev before quantization: {first['eval']['before']['main']:.4f}\n")
cells = lambda b: "error / to FP / time / dev" if first.get("eval") else "error / to FP / time"
print("| method | " + " | ".join(f"{b}-bit {cells(b)}" for b in (2, 3, 4)) + " |")
print("|---|" + "---|" * 3)
for r in rows:
    line = []
    for b in (2, 3, 4):
        rep = reports[(b, r)]
        s = rep["summary"]
        cell = (f"{s['mean_relative_output_error']:.4f} / {s['mean_relative_error_to_full_precision']:.4f}"
                f" / {s['seconds']:.0f} s")
        if rep.get("eval"):
            cell += f" / {rep['eval']['after']['main']:.4f}"
        line.append(cell)
    print(f"| {r} | " + " | ".join(line) + " |")
bpw = {b: reports[(b, rows[0])]["summary"]["bits_per_weight"] for b in (2, 3, 4)}
print("\nbits/weight: " + ", ".join(f"{b}-bit {v:.3f}" for b, v in bpw.items()))
PY
