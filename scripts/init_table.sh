#!/usr/bin/env bash
# Runs `qpeft init` for every initializer on the default model at 2 and 3 bits (MXINT, block
# 32), rank 8 and 16, 128 RTE calibration pairs, and prints the per-initializer table
# (mean scaled/unscaled error, k histograms, time). Usage: scripts/init_table.sh [OUT_DIR]
set -euo pipefail
out=${1:-target/init-table}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/qpeft-target}
cargo build --release --quiet
qpeft=$CARGO_TARGET_DIR/release/qpeft
for bits in 2 3; do
  for rank in 8 16; do
    for init in qlora loftq zeroquant-v2 lqer qera-approx qera-exact lqlora srr-probe srr-exact; do
      dir=$out/b$bits-r$rank-$init
      [ -f "$dir/report.json" ] && continue
      case $init in
        srr-*) args=(--init srr --k-rule "${init#srr-}") ;;
        *) args=(--init "$init") ;;
      esac
      "$qpeft" init "${args[@]}" --bits "$bits" --rank "$rank" --calib rte --out "$dir" >/dev/null 2>&1
      rm -f "$dir/model.safetensors"
    done
  done
done
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| bits | r | init | mean scaled err | mean unscaled err | k histogram | probe k* histogram | time (s) |")
print("|---|---|---|---|---|---|---|---|")
for bits in (2, 3):
    for rank in (8, 16):
        for init in "qlora loftq zeroquant-v2 lqer qera-approx qera-exact lqlora srr-probe srr-exact".split():
            s = json.loads((out / f"b{bits}-r{rank}-{init}" / "report.json").read_text())["summary"]
            hist = lambda h: " ".join(f"{k}:{v}" for k, v in sorted(h.items(), key=lambda kv: int(kv[0]))) if h else "–"
            print(f"| {bits} | {rank} | {init} | {s['mean_scaled_error']:.4f} | {s['mean_unscaled_error']:.4f} | "
                  f"{hist(s['k_histogram'])} | {hist(s.get('probe_k_histogram'))} | {s['seconds']:.1f} |")
PY
