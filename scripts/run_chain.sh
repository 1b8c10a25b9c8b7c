#!/usr/bin/env bash
# The CLI chain: data -> sample-splits -> cache-teacher -> finetune -> evaluate.
#   scripts/run_chain.sh [OUT] [CONFIG]
# With the default config the data is the toy world (generated) and the model its tiny pretrained CLIP.
# With configs/demo_cpu.yaml the data is a small generated ImageFolder and the model a random tiny CLIP.
set -euo pipefail
OUT=${1:-runs/default}
CONFIG=${2:-configs/default.yaml}
CLI=${CLIPCITE:-clipcite}
set -x
if [ "$CONFIG" = configs/demo_cpu.yaml ]; then
  python -m clipcite.data.demo_folder --out "$OUT/images"
  $CLI ingest imagefolder --root "$OUT/images" --layout split/domain/class --dataset demo --out "$OUT/table"
else
  python -m clipcite.toyworld.generate --out "$OUT/table"
fi
$CLI sample-splits --config "$CONFIG" --table "$OUT/table" --out "$OUT/splits"
$CLI cache-teacher --config "$CONFIG" --splits "$OUT/splits" --out "$OUT/teacher"
$CLI finetune --config "$CONFIG" --splits "$OUT/splits" --cache "$OUT/teacher" --out "$OUT/model"
$CLI evaluate --config "$CONFIG" --model "$OUT/model" --splits "$OUT/splits" --out "$OUT/eval"
