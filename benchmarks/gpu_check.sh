#!/usr/bin/env bash
# The CUDA check, one command for a short GPU lease (finishes in well under 8 minutes on an H100):
#   1. the tests marked for CUDA;
#   2. a short MGCC run at 256² with the published widths (cmunet dim_mult 4) in bf16 + channels_last,
#      and the same in fp32 contiguous: images/s, peak GPU memory and final Dice from each run.json;
#   3. the per-method step benchmark at 256², dim_mult 4.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (needs the package installed: pip install -e .)
set -uo pipefail
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
export SEGBENCH_CACHE="$out/cache" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== CUDA tests"
timeout 180 python -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tail -15 | tee "$out/cuda-tests.txt"

run() {  # name, extra args
  local name=$1; shift
  timeout 150 bench run --data phantom:count=200,size=256 --ssl mgcc --backbone cmunet --preset paper \
    --iterations 400 --set val_every=200 --set checkpoint_every=400 --fold 0 --quiet --out "$out/$name" "$@" \
    2>&1 | tail -4
  python - "$out/$name" <<'PY'
import json, sys
from pathlib import Path
run = json.loads(next(Path(sys.argv[1]).glob("*/run.json")).read_text())
t = run["train"]
print(f"RESULT {sys.argv[1]}: {t['images_per_second']:.1f} images/s, peak {t['extra'].get('peak_gpu_memory_gib')} GiB, "
      f"test dice (best) {run['test']['best']['dice']:.4f}, {t['seconds']:.0f} s for {t['steps']} iterations")
PY
}
echo "== MGCC 256², dim_mult 4, bf16 + channels_last"
run bf16-cl --precision bf16 --channels-last
echo "== MGCC 256², dim_mult 4, fp32 contiguous"
run fp32 --precision fp32 --no-channels-last

echo "== per-method step benchmark (256², dim_mult 4)"
timeout 120 python benchmarks/bench_methods.py --size 256 --dim-mult 4 --steps 5 --rounds 2 --out "$out/methods-cuda.json" \
  2>&1 | tail -26
