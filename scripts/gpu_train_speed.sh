#!/usr/bin/env bash
# Training speed on one GPU, in stages (each with its own time limit; results under $OUT):
#   tune     the feedback op's super-chunk length L at the model's and the shapes (tune_feedback.py)
#   eager    whole-model tokens/s, Sessa at several L against the attention model (train_throughput.py)
#   compiled the same under torch.compile
#   check    the Triton op against float64 at real shapes, plus the compiled op (check_triton_gpu.py)
# Usage (GPU machine, repo root): OUT=dir STAGES="tune eager" bash scripts/gpu_train_speed.sh
set -u
OUT=${OUT:-train_speed}; mkdir -p "$OUT"
STAGES=${STAGES:-"tune eager compiled check"}
source scripts/gpu_env.sh
has() { [[ " $STAGES " == *" $1 "* ]]; }
if has tune; then
  for shape in "8 2048 768 ${L_2K:-128 256 512 1024}" "1 4096 1024 ${L_4K:-256 512 1024 2048 4096}" \
               "8 8192 768 ${L_8K:-256 512 1024}" "1 16384 1024 ${L_16K:-512 1024}"; do
    set -- $shape; B=$1; T=$2; D=$3; shift 3
    timeout ${TUNE_LIMIT:-150} python3 scripts/tune_feedback.py --B $B --T $T --D $D --L "$@" \
      --out "$OUT/tune_L.jsonl" 2>&1 | grep -v Warning
  done
fi
if has eager; then
  for L in ${EAGER_L:-256 512}; do
    timeout ${EAGER_LIMIT:-120} python3 scripts/train_throughput.py "$OUT/train_eager_L$L.json" --models sessa \
      --T ${EAGER_T:-2048 8192} --chunk-size $L 2>&1 | tail -n 3
  done
  timeout ${EAGER_LIMIT:-120} python3 scripts/train_throughput.py "$OUT/train_eager.json" --T ${EAGER_T:-2048 8192} \
    2>&1 | tail -n 5
fi
if has compiled; then
  timeout ${COMPILE_LIMIT:-300} python3 scripts/train_throughput.py "$OUT/train_compiled.json" --compile \
    --T ${COMPILE_T:-2048} ${COMPILE_ARGS:-} 2>&1 | tail -n 8
fi
if has check; then
  timeout ${CHECK_LIMIT:-150} python3 scripts/check_triton_gpu.py "$OUT/triton_check_h200.txt" > "$OUT/check.log" 2>&1
  echo "== check exit $?"; tail -n 30 "$OUT/check.log"
fi
