#!/usr/bin/env bash
# Runs one recipe over a grid of --set overrides and seeds, one run directory per (setting, seed),
# skipping finished runs and resuming killed ones, then prints the final-epoch dev score of each
# run and each setting's mean ± standard deviation over the seeds (docs/results.md's protocol
# measurements: length grouping, calibration source).
#
# usage: scripts/protocol_sweep.sh QPEFT OUT RECIPE "SEEDS" "NAME=SET[,SET…]" … [-- COMMON_SET …]
#   e.g. scripts/protocol_sweep.sh qpeft runs/grouping recipes/stsb.toml "42 1 2" \
#          w50=train.length_group_window=50 w1=train.length_group_window=1 \
#          -- adapter.init=qera-exact quant.calib=stsb train.epochs=3 train.max_length=128
set -euo pipefail
qpeft=${1:?the qpeft binary}
out=${2:?an output folder}
recipe=${3:?a recipe}
seeds=${4:?seeds, e.g. "42 1 2"}
shift 4
settings=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do settings+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
common=()
for set in "$@"; do common+=(--set "$set"); done

for setting in "${settings[@]}"; do
  name=${setting%%=*}
  sets=()
  IFS=',' read -ra parts <<< "${setting#*=}"
  for part in "${parts[@]}"; do sets+=(--set "$part"); done
  for seed in $seeds; do
    run="$out/$name-s$seed"
    [ -f "$run/report.json" ] && continue
    if [ -f "$run/recipe.toml" ]; then
      "$qpeft" train --resume "$run"
    else
      "$qpeft" train "$recipe" "${common[@]}" "${sets[@]}" --set "train.seed=$seed" --out "$run"
    fi
  done
done

python3 - "$out" "$seeds" "${settings[@]}" <<'PY'
import json, statistics, sys
from pathlib import Path
out, seeds, settings = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3:]
print(f"| setting | {' | '.join('seed ' + s for s in seeds)} | mean ± std | train s/run |")
print(f"|---|{'---|' * len(seeds)}---|---|")
for setting in settings:
    name = setting.split("=", 1)[0]
    reports = [json.loads((out / f"{name}-s{s}" / "report.json").read_text()) for s in seeds]
    scores = [100 * r["final_main"] for r in reports]
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    per_epoch = ["/".join(f"{100 * e['main']:.1f}" for e in r["epochs"]) for r in reports]
    seconds = statistics.mean(r["train_seconds"] for r in reports)
    print(f"| {name} | {' | '.join(f'{s:.2f} ({p})' for s, p in zip(scores, per_epoch))} "
          f"| {statistics.mean(scores):.2f} ± {std:.2f} | {seconds:.0f} |")
PY
