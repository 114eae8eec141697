#!/usr/bin/env bash
# Generation benchmark on a GPU machine (README "Performance", benchmarks/RESULTS.md), after the byte-LM
# table's last missing run (sessa_nofb seed 2; reuses the carried runs/paper/bytelm).
# Usage (repo root): OUT=/some/dir bash scripts/gpu_generate.sh
set -u
source scripts/gpu_env.sh
OUT=${OUT:-gen_out}; mkdir -p "$OUT"
OMP_NUM_THREADS=1 timeout 170 python3 -m sessa sweep --suite paper --task bytelm --models sessa_nofb \
  --lrs 5e-4 1e-3 2e-3 4e-3 --final-seeds 1 2 --device cuda --out-dir runs/paper --seeds 0 --resume \
  > "$OUT/bytelm_nofb.log" 2>&1
grep -E "^\[|^\| sessa_nofb" "$OUT/bytelm_nofb.log" | tail -n 8
tar czf "$OUT/bytelm_runs.tgz" --exclude=checkpoints --exclude=tensorboard runs/paper/bytelm
timeout ${GEN_LIMIT:-380} python3 -m sessa bench --generate --repeats 3 --out "$OUT/generate_h200.json" 2>&1 \
  | tee "$OUT/generate.log"
