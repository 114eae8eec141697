#!/usr/bin/env bash
# GPU runs of the training harness (issue 5), for the lent 2-GPU machine:
#   1. tokens/s of `sessa train` on 1 GPU vs 2 GPUs (torchrun, DDP), same per-GPU batch;
#   2. `sessa compare --suite paper` for Sessa and the Transformer, one model per GPU in parallel.
# Usage: OUT=/some/dir bash scripts/gpu_harness.sh
# The lent machines are offline and ship an older transformers: first, here,
#   pip download --no-deps -d wheels transformers==5.24.0 tokenizers==0.23.3
#   pip download --no-deps -d wheels --python-version 3.12 --only-binary=:all: \
#       --platform manylinux2014_x86_64 regex safetensors==0.8.0
# and carry wheels/ with the run. Knobs: STEPS (paper compare, default 2500), LIMIT (seconds per compare),
# DDP_STEPS, DDP_LOG.
set -uo pipefail
OUT=${OUT:-gpu_out}
STEPS=${STEPS:-2500}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if ! python3 -c "import transformers, sys; v = tuple(map(int, transformers.__version__.split('.')[:2])); sys.exit(v < (5, 24))"; then
  rm -rf /tmp/sessa-deps
  pip install --no-deps --no-index -q --target /tmp/sessa-deps wheels/transformers-* wheels/tokenizers-* wheels/safetensors-* wheels/regex-*
  export PYTHONPATH=/tmp/sessa-deps
fi
python3 -c "import transformers; print('transformers', transformers.__version__)"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
COMMON=(--task symbolsoup --preset small --steps ${DDP_STEPS:-200} --batch-size 32 --eval-every 0 --eval-examples 64
        --log-every ${DDP_LOG:-50} --device cuda)
python3 -m sessa train "${COMMON[@]}" --out-dir "$OUT/ddp1" | grep -E "step|parameters"
python3 -m torch.distributed.run --nproc_per_node=2 -m sessa train "${COMMON[@]}" --distributed ddp \
  --out-dir "$OUT/ddp2" | grep -E "step|parameters"
python3 - "$OUT" <<'PY'
import csv, sys
for n in (1, 2):
    rows = [r for r in csv.DictReader(open(f"{sys.argv[1]}/ddp{n}/metrics.csv")) if r["tokens_per_s"]]
    last = [float(r["tokens_per_s"]) for r in rows[-3:]]  # windows after warm-up (steps 51-200)
    print(f"{n} GPU(s): tokens/s per window {last}, loss at step 200 {rows[-1]['loss']}")
PY
CUDA_VISIBLE_DEVICES=0 timeout ${LIMIT:-420} python3 -m sessa compare --suite paper --models sessa --steps "$STEPS" \
  --out-dir "$OUT/paper_sessa" > "$OUT/paper_sessa.log" 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout ${LIMIT:-420} python3 -m sessa compare --suite paper --models attention --steps "$STEPS" \
  --out-dir "$OUT/paper_attention" > "$OUT/paper_attention.log" 2>&1 &
wait
tail -n 30 "$OUT/paper_sessa.log" "$OUT/paper_attention.log"
tar czf "$OUT/runs.tgz" -C "$OUT" --exclude='checkpoints' --exclude='tensorboard' ddp1 ddp2 paper_sessa paper_attention
rm -rf "$OUT/ddp1" "$OUT/ddp2" "$OUT/paper_sessa" "$OUT/paper_attention"
