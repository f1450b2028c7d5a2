#!/usr/bin/env bash
# Copy the data gpu_check.sh needs into .carry/data (git-ignored), to `carry` to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
src="${CULL_DATA_DIR:-$(cd .. && pwd)/shared/data}"
mkdir -p .carry/data/tokenizers .carry/data/phrases
cp -r "$src/tokenizers/qwen2" .carry/data/tokenizers/
cp -r "$src/phrases/antislop" .carry/data/phrases/
git rev-parse --short HEAD > .carry/GIT_SHA  # the commit the GPU run measures (commit first)
du -sh .carry
