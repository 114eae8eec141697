#!/usr/bin/env bash
# Packed variable-length sequences on one GPU (results under $OUT): the one-launch packed solve against
# float64 in three dtypes, its speed against one launch sequence per segment / a padded batch / SDPA, and a
# whole training step padded vs packed on ListOps (scripts/bench_packing.py); then the quick accuracy check
# of the fixed-length op (scripts/check_triton_gpu.py --quick), which shares the kernels.
# Usage (GPU machine, repo root): OUT=dir bash scripts/gpu_packing.sh
set -u
OUT=${OUT:-packing}; mkdir -p "$OUT"
source scripts/gpu_env.sh
cd scripts
for part in ${PARTS:-check op model}; do
  timeout ${LIMIT:-200} python3 bench_packing.py "$OUT/packing_$part.json" --parts $part 2>&1 | grep -v Warning
done
if [ -n "${MASKED_TOO:-}" ]; then  # the model step again with packed attention through SDPA and a block mask
  SESSA_PACKED_FLASH=0 timeout ${LIMIT:-200} python3 bench_packing.py "$OUT/packing_model_masked.json" \
    --parts model 2>&1 | grep -v Warning
fi
cd ..
if [ -z "${NO_CHECK:-}" ]; then
  timeout ${CHECK_LIMIT:-150} python3 scripts/check_triton_gpu.py "$OUT/triton_check_quick.txt" --quick 2>&1 | tail -n 25
fi
