#!/usr/bin/env bash
# SymbolSoup diagnosis on one GPU (RESULTS.md, "`--preset paper` on one GPU"): Sessa with the Triton solve,
# the chunked solve, in fp32, and Sessa without feedback, 4 runs sharing the GPU (small models are launch-bound).
# Usage: OUT=/some/dir bash scripts/symbolsoup_diag.sh   (STEPS, default 6000). On the offline lent machines
# carry wheels/ as scripts/gpu_harness.sh explains.
set -u
if [ -d wheels ]; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site wheels/transformers-* wheels/tokenizers-* \
    wheels/safetensors-* wheels/regex-* && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
STEPS=${STEPS:-6000}
OUT=${OUT:-symbolsoup_diag}
mkdir -p "$OUT"  # each run stops after 540 s (a lent machine allows 600 s per command)
C=(--task symbolsoup --preset small --steps $STEPS --batch-size 32 --lr 1e-3 --eval-every 1000 --eval-examples 400 --log-every 500 --device cuda --ckpt-every 0)
timeout 540 python3 -m sessa train "${C[@]}" --model sessa --out-dir $OUT/triton > $OUT/triton.log 2>&1 &
timeout 540 python3 -m sessa train "${C[@]}" --model sessa --model-option feedback_backend=chunked --out-dir $OUT/chunked > $OUT/chunked.log 2>&1 &
timeout 540 python3 -m sessa train "${C[@]}" --model sessa_nofb --out-dir $OUT/nofb > $OUT/nofb.log 2>&1 &
timeout 540 python3 -m sessa train "${C[@]}" --model sessa --amp none --out-dir $OUT/fp32 > $OUT/fp32.log 2>&1 &
wait
for n in triton chunked nofb fp32; do echo "== $n"; grep -E "eval (valid|test)|step .*(000|500)/" $OUT/$n.log | tail -n 8; tail -n 2 $OUT/$n.log; done
find $OUT -name "*.safetensors" -delete; find $OUT -name "training_state.pt" -delete
