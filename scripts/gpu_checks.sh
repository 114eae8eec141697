#!/usr/bin/env bash
# GPU checks in one command (each step has its own time limit; logs and results under $OUT):
#   1. Triton feedback kernels, fp32 / bf16 / fp16 at real shapes vs float64 (scripts/check_triton_gpu.py)
#   2. Mamba-2 on fla-core: parity, 125m training tokens/s and memory, decode (scripts/check_mamba2_fla.py);
#      needs fla_core-*.whl in .whl/
#   3. the package installed as-is on the machine's own torch / transformers / triton (no upgrade), then the
#      unit tests (GPU tests included) there
# Usage (GPU machine, repo root): OUT=/some/dir bash scripts/gpu_checks.sh
set -u
OUT=${OUT:-gpu_checks}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout ${KERNEL_LIMIT:-120} python3 scripts/check_triton_gpu.py "$OUT/triton_check_h200.txt" > "$OUT/triton_check.log" 2>&1
echo "== triton check exit $?"; tail -n 40 "$OUT/triton_check.log"
mkdir -p /tmp/fla && python3 -m pip install -q --no-index --no-deps --target /tmp/fla .whl/fla_core-*.whl
PYTHONPATH=/tmp/fla:$PWD timeout ${FLA_LIMIT:-170} python3 scripts/check_mamba2_fla.py "$OUT/mamba2_fla_h200.json" \
  > "$OUT/mamba2_fla.log" 2>&1
echo "== fla check exit $?"; tail -n 40 "$OUT/mamba2_fla.log"
python3 -m pip install -q --no-index --no-build-isolation -e ".[train]" > "$OUT/install.log" 2>&1
echo "== pip install -e .[train] without an index: exit $?"; tail -n 3 "$OUT/install.log"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
timeout ${TEST_LIMIT:-150} python3 -m pytest -q -m "not slow" -p no:cacheprovider --deselect tests/ops/test_triton_compile.py \
  > "$OUT/pytest.log" 2>&1
echo "== pytest exit $?"; tail -n 15 "$OUT/pytest.log"
