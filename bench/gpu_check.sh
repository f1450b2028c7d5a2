#!/usr/bin/env bash
# Everything that needs a GPU, in one call of the device tool:
#   GPU tests (kernel vs reference on CUDA, no host sync, CUDA-graph replay), then the kernel and
#   end-to-end benchmarks. JSON, markdown and plots go to $OUT (default bench/results).
# The data it needs travels in .carry/data (ignored by git), made with:  bench/gpu_carry.sh
#   bench/gpu_check.sh [all|tests|kernel|profile|e2e ...]     (default: all)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export CULL_DATA_DIR="${CULL_DATA_DIR:-$PWD/.carry/data}" CULL_CACHE_DIR="${CULL_CACHE_DIR:-$(mktemp -d)}"
[[ -f .carry/GIT_SHA ]] && export CULL_GIT_SHA="$(cat .carry/GIT_SHA)"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# cull.kernels lives in kernels/ (setuptools package-dir); without an install, link it for this run
python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || ln -sfn ../kernels cull/kernels
if compgen -G ".whl/*.whl" >/dev/null; then  # carried wheels (e.g. the transformers the baselines need)
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python -c "import torch, triton, transformers; print('transformers', transformers.__version__); print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
phases="${*:-all}"
status=0
want() { [[ " $phases " == *" all "* || " $phases " == *" $1 "* ]]; }
if want tests; then
  python -m pytest tests/kernels/test_gpu.py -m gpu -q -p no:cacheprovider -x 2>&1 | tee "$OUT/gpu-tests.log"
  status=${PIPESTATUS[0]}
  echo "gpu tests exit code: $status"
fi
if want kernel; then
  python -m bench.kernel_bench --gpu --out "$OUT" 2>&1 | tee /tmp/kernel-bench.log | grep -v '^{' | tail -60
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if want profile; then
  python -m bench.eager_profile 2>&1 | tail -40
fi
if want e2e; then
  python -m bench.e2e_bench --gpu --out "$OUT" 2>&1 | tee /tmp/e2e-bench.log | tail -12
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
exit "$status"
