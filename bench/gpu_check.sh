#!/usr/bin/env bash
# Everything that needs a GPU, in one call of the device tool:
#   GPU tests (kernel vs reference on CUDA, no host sync, CUDA-graph replay), then the kernel and
#   end-to-end benchmarks. JSON, markdown and plots go to $OUT (default bench/results).
# The data it needs travels in .carry/data (ignored by git), made with:  bench/gpu_carry.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export CULL_DATA_DIR="${CULL_DATA_DIR:-$PWD/.carry/data}" CULL_CACHE_DIR="$(mktemp -d)" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# cull.kernels lives in kernels/ (setuptools package-dir); without an install, link it for this run
python -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || ln -sfn ../kernels cull/kernels
python -m pip install -q --no-index .whl/*.whl 2>/dev/null || true   # pytest, if carried as a wheel
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
python -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
python -m bench.kernel_bench --gpu --out "$OUT" 2>&1 | tail -40
python -m bench.e2e_bench --gpu --out "$OUT" 2>&1 | tail -20
echo "gpu tests exit code: $tests"
exit "$tests"
