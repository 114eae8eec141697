#!/usr/bin/env bash
# The paper tables on one GPU (docs/paper/, README "Paper tables"). Each stage fits one 10-minute command;
# 16 runs share the GPU (8 per task, one CPU thread each). Run folders go to runs/paper (relative, so a later
# stage on a fresh machine reuses earlier runs: carry runs/paper back and forth, without checkpoints).
#   STAGE=sweep  Table 1 lr sweep: SymbolSoup and diffuse MQAR, 4 models x 4 lrs, seed 0
#   STAGE=final  Table 1 final seeds 1 2 at each model's selected lr
#   STAGE=lm     byte-level LM: 3 lrs at seed 0, then seeds 1 2 at each model's selected lr
#   STAGE=wide   a larger matched model on SymbolSoup (d_model 384, 6 layers, ~8M parameters), WIDE_MODELS over
#                WIDE_LRS at seed 0 for WIDE_STEPS steps, one sweep per model in runs/paper_wide_<steps>/<model>
# STAGE may list several stages ("lm wide"): they run at the same time.
# Usage (GPU machine, repo root): STAGE=sweep OUT=/some/dir bash scripts/paper_tables.sh
set -u
source scripts/gpu_env.sh
export OMP_NUM_THREADS=1
OUT=${OUT:-paper_out}; mkdir -p "$OUT" runs/paper
LIMIT=${LIMIT:-320}   # start no new run after this many seconds
T1_LRS="2.5e-4 5e-4 1e-3 2e-3"
LM_LRS="5e-4 1e-3 2e-3 4e-3"   # 4e-3 added after 2e-3 won at the edge of the first grid
MODELS="sessa attention mamba2 sessa_nofb"
LM_PARALLEL=${LM_PARALLEL:-12}
WIDE_STEPS=${WIDE_STEPS:-1000}
WIDE_MODELS=${WIDE_MODELS:-sessa attention mamba2 sessa_nofb}
WIDE_LRS=${WIDE_LRS:-5e-4 1e-3}
WIDE='model_options={"d_model":384,"n_layers":6,"n_heads":6}'
S=(python3 -m sessa sweep --suite paper --models $MODELS --device cuda --out-dir runs/paper --seeds 0 --resume)
for stage in ${STAGE:-sweep}; do
case "$stage" in
  sweep)
    for t in symbolsoup diffuse_mqar; do
      timeout 585 "${S[@]}" --task $t --lrs $T1_LRS --parallel 8 --time-limit $LIMIT > "$OUT/$t.log" 2>&1 &
    done ;;
  final)  # the three models whose sweep finished start their final seeds at once; sessa_nofb first completes
           # its SymbolSoup sweep (it ran out of time in the sweep stage)
    for t in symbolsoup diffuse_mqar; do
      timeout 585 "${S[@]}" --task $t --lrs $T1_LRS --final-seeds 1 2 --parallel 6 --time-limit $LIMIT \
        --models sessa attention mamba2 > "$OUT/$t.log" 2>&1 &
    done
    timeout 585 "${S[@]}" --task symbolsoup --lrs $T1_LRS --final-seeds 1 2 --parallel 3 --time-limit $LIMIT \
      --models sessa_nofb > "$OUT/symbolsoup_nofb.log" 2>&1 &
    timeout 585 "${S[@]}" --task diffuse_mqar --lrs $T1_LRS --final-seeds 1 2 --parallel 2 --time-limit $LIMIT \
      --models sessa_nofb > "$OUT/diffuse_mqar_nofb.log" 2>&1 & ;;
  lm)      # the Table 2 analogue: byte-level LM, 3 lrs at seed 0, then seeds 1 2 at each model's selected lr
    timeout 585 "${S[@]}" --task bytelm --lrs $LM_LRS --final-seeds 1 2 --parallel $LM_PARALLEL --time-limit $LIMIT \
      > "$OUT/bytelm.log" 2>&1 & ;;
  wide)
    for m in $WIDE_MODELS; do
      lrs=(${WIDE_LRS}); [ "$m" = mamba2 ] && lrs=(${WIDE_LRS_MAMBA2:-${lrs[0]}})  # the slowest model: one lr
      timeout 585 python3 -m sessa sweep --suite paper --task symbolsoup --models $m --lrs "${lrs[@]}" --seeds 0 \
        --device cuda --steps "$WIDE_STEPS" --out-dir "runs/paper_wide_$WIDE_STEPS/$m" --resume --set "$WIDE" \
        --parallel ${#lrs[@]} > "$OUT/wide_$m.log" 2>&1 &
    done ;;
  *) echo "unknown STAGE $stage (sweep, final, lm, wide)"; exit 2 ;;
esac
done
wait
for f in "$OUT"/*.log; do echo "== $f"; grep -E "^\[|^\| |time limit|rror" "$f" | tail -n 40; done
tar czf "$OUT/paper_runs.tgz" --exclude=checkpoints --exclude=tensorboard runs/paper runs/paper_wide_* 2>/dev/null
