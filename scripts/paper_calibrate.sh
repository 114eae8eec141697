#!/usr/bin/env bash
# Throughput of the paper-table runs when 16 share one GPU (small preset, bf16 autocast): every model on
# SymbolSoup (batch 64 and 128), diffuse MQAR (batch 64) and bytelm (batch 64, 256 tokens), 150 steps each.
# Usage (GPU machine): OUT=/some/dir bash scripts/paper_calibrate.sh
set -u
source scripts/gpu_env.sh
OUT=${OUT:-calib}; mkdir -p "$OUT/runs"
C=(--preset small --steps 150 --eval-every 0 --log-every 50 --device cuda --lr 3e-4 --warmup-fraction 0.1)
start=$(date +%s)
for m in sessa attention mamba2 sessa_nofb; do
  for spec in "symbolsoup 64" "symbolsoup 128" "diffuse_mqar 64" "bytelm 64"; do
    set -- $spec
    ( t0=$(date +%s); python3 -m sessa train "${C[@]}" --task $1 --batch-size $2 --model $m \
        --out-dir "$OUT/runs/$1-$2-$m" > "$OUT/runs/$1-$2-$m.log" 2>&1; echo "$1 $2 $m exit $? wall $(( $(date +%s) - t0 )) s" ) &
  done
done
wait
echo "all 16 done in $(( $(date +%s) - start )) s"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
rows = []
for p in sorted(pathlib.Path(sys.argv[1], "runs").glob("*/summary.json")):
    s = json.loads(p.read_text())
    steps = s["steps"]
    rows.append((p.parent.name, s["tokens_per_s"], s["train_time_s"] / steps * 1000, s["status"],
                 s["history"][-1] if s["history"] else {}))
for name, tps, ms, status, last in rows:
    print(f"{name:28s} {tps:>10,.0f} tok/s  {ms:6.1f} ms/step  {status}  last={last}")
PY
for f in "$OUT"/runs/*.log; do grep -l -i "error\|traceback" "$f" && tail -5 "$f"; done
tar czf "$OUT/calib.tgz" --exclude=checkpoints -C "$OUT" runs && rm -rf "$OUT/runs"
