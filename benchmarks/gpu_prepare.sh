#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before a device call: puts what the GPU machine lacks into .gpu/
# (git-ignored), which the device tool carries when asked (carry: [".gpu"]):
#   .gpu/wheels/  the packages the GPU image lacks (it has torch, timm, typer, pluggy, pandas, seaborn, ...)
#   .gpu/busi/    BUSI packed to fit the 64 MiB the device tool carries (benchmarks/pack_dataset.py)
# Usage: bash benchmarks/gpu_prepare.sh [BUSI_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
busi=${1:-../shared/data/busi}
mkdir -p .gpu/wheels
python -m pip download -q --no-deps -d .gpu/wheels segmentation-models-pytorch diffusers submitit importlib-metadata
[ -d .gpu/busi ] || python benchmarks/pack_dataset.py "$busi" .gpu/busi --max-side 320 --quality 95
du -sh .gpu/wheels .gpu/busi
