#!/usr/bin/env bash
# Dropout at fixed trained parameters, qpeft against PyTorch (docs/results.md, "The epoch level").
#
#   scripts/check_dropout.sh QPEFT PYTHON RUN EPOCH OUT [DRAWS]
#
# RUN is a whole-run dump (`qpeft train … --dump-batches 100000`) with checkpoints per epoch.
# OUT becomes a copy of RUN at its epoch-EPOCH checkpoint whose recipe has a learning rate of
# 1e-30 and logs every step; resuming it trains epoch EPOCH+1 on the dumped batches without
# moving a parameter, so each logged loss is one dropout draw of qpeft's at those parameters.
# check_training.py --fixed-params then draws DRAWS (default 4) masks of PyTorch's per step at
# the same parameters on the same batches, and once without dropout, and compares.
set -euo pipefail
[ $# -ge 5 ] || { echo "usage: $0 QPEFT PYTHON RUN EPOCH OUT [DRAWS]" >&2; exit 2; }
QPEFT=$1 PY=$2 RUN=$3 EPOCH=$4 OUT=$5 DRAWS=${6:-4}
CHECKPOINT="$RUN/checkpoints/epoch-$EPOCH"
[ -f "$CHECKPOINT/trainable.safetensors" ] || { echo "$CHECKPOINT: no checkpoint there" >&2; exit 2; }
[ -f "$RUN/dump/trace.json" ] || { echo "$RUN/dump/trace.json: not a run made with --dump-batches" >&2; exit 2; }
if [ ! -f "$OUT/recipe.toml" ]; then
  mkdir -p "$OUT/checkpoints"
  cp -r "$RUN/init" "$OUT/init"
  cp -r "$CHECKPOINT" "$OUT/checkpoints/"
  sed -e 's/^learning_rate = .*/learning_rate = 1e-30/' -e 's/^log_every = .*/log_every = 1/' \
    "$RUN/recipe.toml" > "$OUT/recipe.toml"
fi
[ -d "$OUT/checkpoints/epoch-$((EPOCH + 1))" ] || "$QPEFT" train --resume "$OUT"
"$PY" "$(dirname "$0")/check_training.py" "$RUN" --fixed-params "$OUT" --epoch "$EPOCH" --draws "$DRAWS" --threads 1
