#!/usr/bin/env bash
# Decoding on a GPU machine (README "Performance", benchmarks/RESULTS.md "Generation"): the decode kernels
# and the CUDA-graph static cache checked against references, then `sessa bench --generate`.
# Usage (repo root): OUT=/some/dir bash scripts/gpu_generate.sh
set -u
source scripts/gpu_env.sh
OUT=${OUT:-gen_out}; mkdir -p "$OUT"
timeout 120 python3 scripts/check_decode_gpu.py "$OUT/decode_check_h200.json" 2>&1 | tee "$OUT/decode_check.log"
timeout ${GEN_LIMIT:-360} python3 -m sessa bench --generate --repeats ${REPEATS:-2} \
  --out "$OUT/generate_h200.json" 2>&1 | tee "$OUT/generate.log"
