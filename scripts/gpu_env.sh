# Source this on a lent GPU machine before running sessa from the checkout (no install needed):
#   source scripts/gpu_env.sh
# The machines are offline and may ship an older transformers than pyproject asks for; wheels carried in
# .whl/ (see device/README: pip download --no-deps ... -d .whl transformers==X regex fla-core) are put on
# PYTHONPATH when present. Prints the versions in use.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
python3 - <<'PY'
import importlib, torch
names = ["triton", "transformers", "safetensors", "fla"]
versions = {n: getattr(importlib.import_module(n), "__version__", "?") if importlib.util.find_spec(n) else "-"
            for n in names}
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "| torch", torch.__version__,
      "|", " ".join(f"{k} {v}" for k, v in versions.items()))
PY
