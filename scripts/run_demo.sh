#!/usr/bin/env bash
# The CLI chain on CPU: generated images -> ingest -> sample-splits -> cache-teacher -> finetune -> evaluate.
set -euo pipefail
OUT=${1:-runs/demo}
CLI=${CLIPCITE:-clipcite}
CONFIG=configs/demo_cpu.yaml
set -x
python -m clipcite.demo --out "$OUT/images"
$CLI ingest imagefolder --root "$OUT/images" --layout split/domain/class --dataset demo --out "$OUT/table"
$CLI sample-splits --config $CONFIG --table "$OUT/table" --out "$OUT/splits"
$CLI cache-teacher --config $CONFIG --splits "$OUT/splits" --out "$OUT/teacher"
$CLI finetune --config $CONFIG --splits "$OUT/splits" --cache "$OUT/teacher" --out "$OUT/model"
$CLI evaluate --config $CONFIG --model "$OUT/model" --splits "$OUT/splits" --out "$OUT/eval"
