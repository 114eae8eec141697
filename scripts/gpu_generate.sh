#!/usr/bin/env bash
# Decoding on a GPU machine (README "Performance", benchmarks/RESULTS.md "Generation"): the decode kernels
# and the CUDA-graph static cache (eager and compiled step) checked against references, a kernel profile of
# one decode step, then `sessa bench --generate`; "kernels": the decode kernels alone against SDPA;
# "genprofile": GPU against wall time of a decode token inside generate, and its host ops, for PROFILE_MODELS.
# Usage (repo root): OUT=/some/dir [MODELS="sessa-compiled llama ..."] [STAGES="check profile bench kernels"] \
#   [GEN_ARGS="--contexts 1024 8192 --batch-sizes 1"] \
#   bash scripts/gpu_generate.sh
set -u
source scripts/gpu_env.sh
OUT=${OUT:-gen_out}; mkdir -p "$OUT"
STAGES=${STAGES:-check profile bench}
MODELS=${MODELS:-sessa sessa-static sessa-compiled attention attention-static attention-compiled mamba2 mamba2-static mamba2-compiled llama llama-static}
case " $STAGES " in *" check "*)
  timeout ${CHECK_LIMIT:-200} python3 scripts/check_decode_gpu.py "$OUT/decode_check_h200.json" 2>&1 \
    | tee "$OUT/decode_check.log";; esac
case " $STAGES " in *" profile "*)
  timeout ${PROFILE_LIMIT:-150} python3 scripts/profile_decode_step.py 8192 "$OUT/decode_profile_h200.json" 2>&1 \
    | grep -v Warning | tee "$OUT/decode_profile.log";; esac
case " $STAGES " in *" bench "*)
  # shellcheck disable=SC2086
  timeout ${GEN_LIMIT:-360} python3 -m sessa bench --generate --repeats ${REPEATS:-2} --models $MODELS \
    ${GEN_ARGS:-} --out "$OUT/generate_h200.json" 2>&1 | tee "$OUT/generate.log";; esac
case " $STAGES " in *" genprofile "*)
  # shellcheck disable=SC2086
  timeout ${GENPROFILE_LIMIT:-300} python3 scripts/profile_generate.py ${CONTEXT:-8192} \
    "$OUT/generate_profile_h200.json" ${PROFILE_MODELS:-attention-compiled llama-static sessa llama} 2>&1 \
    | grep -v Warning | tee "$OUT/generate_profile.log";; esac
case " $STAGES " in *" kernels "*)
  timeout ${KERNEL_LIMIT:-120} python3 scripts/bench_decode_kernels.py "$OUT/decode_kernels_h200.json" 2>&1 \
    | tee "$OUT/decode_kernels.log";; esac
